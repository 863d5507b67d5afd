"""Preemption: SIGTERM and SIGUSR1 (SLURM's warning) stop a run at the next step boundary.

The handler only records the signal: a step in flight has its weights perturbed, so the loop
finishes the step, writes a checkpoint and raises :class:`Preempted`. The entrypoint then hands
over to the handler that was installed before ours (submitit's, which requeues the job on
SIGUSR1) or exits with :data:`REQUEUE_EXIT_CODE`, and the requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): interrupted, run it again to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped at ``step`` on signal ``signum`` after writing its checkpoint."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written")
        self.signum, self.step = signum, step


class StopRequest:
    """Context manager: while active, SIGTERM/SIGUSR1 set :attr:`requested` instead of killing us."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a launcher's worker): signals stay as they were
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)



def hand_over(error: Preempted) -> None:
    """After the checkpoint (and with our handlers removed again): the handler that was there before
    acts on the signal (submitit's requeues the job and exits); otherwise exit with REQUEUE_EXIT_CODE."""
    handler = signal.getsignal(error.signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(error.signum, None)
    raise SystemExit(REQUEUE_EXIT_CODE)
