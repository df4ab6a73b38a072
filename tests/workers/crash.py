"""Aborts every process inside train.py's run under torchrun, as a crash in torch's C++
code would (for tests/test_distributed.py).

    torchrun --standalone --nproc-per-node 2 tests/workers/crash.py [train.py flags]
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import runner  # noqa: E402
import train  # noqa: E402
from distributed import exit_process  # noqa: E402


def crash_inside_the_run(*args, **kwargs) -> None:
    os.abort()  # SIGABRT, like std::terminate in a torch or gloo thread


if __name__ == "__main__":
    runner.fit = crash_inside_the_run
    exit_process(train.main(sys.argv[1:]))
