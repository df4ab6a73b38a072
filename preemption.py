"""Stopping on request: SIGTERM (a cluster preempting the job) or SIGINT (Ctrl-C).

While training, the first such signal only raises a flag. The loop finishes the step in
flight, saves a checkpoint at that step and exits; `-r` continues from there. Further
signals change nothing, so a second Ctrl-C cannot tear the save. Under torchrun the
processes agree on the step to stop at, so all of them save the same one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

from distributed import Distributed

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A context in which SIGTERM and SIGINT ask the training loop to stop.

    ``with StopRequest() as stop: ... if stop.agreed(dist, device, check): break``
    """

    def __init__(self) -> None:
        self.signum = 0  # the first signal received by this process, 0 for none
        self.decided = 0  # the signal all processes agreed to stop for, 0 for none
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if not self.signum:
            self.signum = signum

    def agreed(self, dist: Distributed, device: torch.device, check: bool) -> int:
        """The signal to stop for, the same on every process (0: go on); also kept in ``decided``.

        One process decides alone, at every step. Under torchrun the processes compare
        flags only where CHECK is true (a collective on DEVICE, the one the process group
        communicates on), and stop if any was signalled.
        """
        if dist.world == 1:
            self.decided = self.signum
        elif check:
            flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.decided = int(flag.item())
        return self.decided
