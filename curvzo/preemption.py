"""Stopping a run: SIGTERM, SIGUSR1 (SLURM's warning) and Ctrl-C (SIGINT) stop it at the next step boundary.

The handler only records the first signal: the loop finishes the step in flight, writes a checkpoint
and raises :class:`Preempted`. The entrypoint then hands over to the handler that was installed
before ours (submitit's, which requeues the job on SIGUSR1) or exits with :data:`REQUEUE_EXIT_CODE`,
and running the command again resumes from the checkpoint. A second signal does not wait: it raises
:class:`KeyboardInterrupt` at once (a second Ctrl-C, or a job stuck where no step boundary comes).
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): interrupted, run it again to continue
HARD_STOP_EXIT_CODE = 130  # 128 + SIGINT, the shell's code for a Ctrl-C that stopped a program
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """The run stopped at ``step`` on signal ``signum`` after writing its checkpoint."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written, "
                         f"run the same command again to continue")
        self.signum, self.step = signum, step

    @property
    def status(self) -> str:
        """``interrupted`` for Ctrl-C, ``preempted`` for a scheduler's signal."""
        return stop_status(self.signum)


def stop_status(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else "preempted"


class StopRequest:
    """Context manager: while active, the first SIGTERM/SIGUSR1/SIGINT sets :attr:`requested` instead of
    killing us; the next one raises :class:`KeyboardInterrupt` wherever the program is.

    ``repeat_window_s``: a signal within this many seconds of the first is the same request. Under torchrun
    every stop comes twice (the scheduler's or the terminal's signal to the group, then the launcher's
    forwarded copy), and the copy must not cut short the checkpoint the first one asked for."""

    def __init__(self, repeat_window_s: float = 0.0) -> None:
        self.requested: int | None = None
        self.previous: dict[int, Any] = {}
        self.repeat_window_s = repeat_window_s
        self._first_at = 0.0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested, self._first_at = signum, time.monotonic()
            return
        if time.monotonic() - self._first_at >= self.repeat_window_s:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopped at once")

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
    if callable(handler) and handler is not signal.default_int_handler:  # Python's own Ctrl-C handler: not a requeue
        handler(error.signum, None)
    raise SystemExit(REQUEUE_EXIT_CODE)
