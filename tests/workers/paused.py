"""Runs train.py or mnist.py and holds it at a chosen step until it is signalled, so
that a test signals (or kills) it at a known point instead of after a sleep.

    python tests/workers/paused.py STEP SIGNALS SCRIPT [flags]
    torchrun --standalone --nproc-per-node 2 tests/workers/paused.py STEP SIGNALS SCRIPT [flags]

Before its STEP-th training step (counted from 1 in this process), rank 0 prints
"paused before step STEP (pid PID)" and waits for a signal. With SIGNALS 2, the save of
last.pt that the signal causes prints "paused in the save" and waits for a second signal
before it writes. A process that waits 10 minutes in vain exits with status 3. Under
torchrun it holds in the first attempt only: the workers torchrun restarts
(TORCHELASTIC_RESTART_COUNT 1 and up) train straight on.
"""

import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import engine  # noqa: E402
import preemption  # noqa: E402
import runner  # noqa: E402
from distributed import exit_process, is_main_process  # noqa: E402

RECEIVED: list[int] = []  # the signals the training loop's handler has seen


def wait_for_signals(count: int, message: str) -> None:
    print(message, flush=True)
    for _ in range(60_000):
        if len(RECEIVED) >= count:
            return
        time.sleep(0.01)  # a signal interrupts the sleep and runs its handler at once
    print(f"{message}: no signal came within 10 minutes", file=sys.stderr, flush=True)
    os._exit(3)


def hold(step: int, signals: int) -> None:
    """Patch the loop: wait before training step STEP, and (SIGNALS 2) in the save it causes."""
    handle, train_step, atomic_save, calls = preemption.StopRequest._handle, engine.train_step, runner.atomic_save, []
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def recording(self, signum: int, frame) -> None:
        RECEIVED.append(signum)
        handle(self, signum, frame)

    def stepping(*args, **kwargs):
        calls.append(1)
        if len(calls) == step and is_main_process() and first_attempt:
            wait_for_signals(1, f"paused before step {step} (pid {os.getpid()})")
        return train_step(*args, **kwargs)

    def saving(state: dict, path: Path) -> None:
        if signals > 1 and RECEIVED and path.name == "last.pt":
            wait_for_signals(2, "paused in the save")
        atomic_save(state, path)

    preemption.StopRequest._handle, engine.train_step, runner.atomic_save = recording, stepping, saving


if __name__ == "__main__":
    step, signals, script = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    hold(step, signals)
    module = importlib.import_module(Path(script).stem)
    code = module.main(sys.argv[4:])
    exit_process(code)
