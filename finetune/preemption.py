"""Preemption and timeout on SLURM: save the training state, then let submitit requeue the job.

submitit installs a handler for its timeout/preemption signal (USR2 by default, `SUBMITIT_PREEMPT_SIGNAL`)
that calls the launcher's `checkpoint()` (hydra-submitit-launcher resubmits the same job) and exits.
Exiting mid-step would lose up to `save_every_minutes` of work, so `PreemptionGuard` takes the signal
first, lets the training loop finish its step and save, and then hands the signal to submitit's handler.
The requeued job composes the same config, finds `train_state.pt` and resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def preemption_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class PreemptionGuard:
    """Defers the preemption signal to a step boundary. A no-op outside submitit jobs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.frame: FrameType | None = None
        self.previous: Callable | int | None = None
        self.sig = preemption_signal()

    def install(self) -> PreemptionGuard:
        previous = signal.getsignal(self.sig)
        if callable(previous):  # only where someone (submitit) handles the signal
            self.previous = previous
            signal.signal(self.sig, self._note)
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        log.warning("caught signal %s: saving the training state at the end of this step", signal.Signals(signum).name)
        self.signum, self.frame = signum, frame

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """Give the signal to the handler we displaced (submitit's: checkpoint + requeue + exit)."""
        signal.signal(self.sig, self.previous)
        self.previous(self.signum, self.frame)

    def uninstall(self) -> None:
        if self.previous is not None and signal.getsignal(self.sig) == self._note:
            signal.signal(self.sig, self.previous)
