"""Preemption: SIGTERM and SIGUSR1 (what Slurm sends before it kills a job) become a flag, and a
preempted Slurm job is requeued.

While `PREEMPTION.catching()` (or between `install()` and the restore it returns), those signals
only set `PREEMPTION.signal`; the training loop checks it after each minibatch, checkpoints and
returns "preempted", and `runner.main` requeues the job and exits with EXIT_PREEMPTED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again": `main`'s exit status after a preemption


class Preemption:
    """Turns SIGTERM/SIGUSR1 into a flag while `catching()`, instead of killing the process mid-step.

    The flag (`signal`, the number caught, else None) stays set until `clear()` (which `run` does
    when it stops for it), so a signal that arrives between two runs of `main` is not lost. Handlers
    can only be installed from the main thread; elsewhere `catching()` changes nothing.
    """

    def __init__(self):
        self.signal: int | None = None

    def _catch(self, signum, frame):
        self.signal = signum

    def clear(self) -> None:
        self.signal = None

    def install(self) -> Callable[[], None]:
        """Install the handlers; returns the function that puts the previous ones back."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {sig: signal.signal(sig, self._catch) for sig in PREEMPT_SIGNALS}
        return lambda: [signal.signal(sig, handler) for sig, handler in old.items()]

    @contextlib.contextmanager
    def catching(self):
        restore = self.install()
        try:
            yield self
        finally:
            restore()


PREEMPTION = Preemption()


def requeue_slurm_job() -> str | None:
    """Under Slurm (SLURM_JOB_ID set), `scontrol requeue` this job or array task; returns its id.

    Slurm then ends this job and starts it again later; the run resumes from its checkpoint.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{task}" if array_job and task else job
    try:
        done = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"could not requeue Slurm job {target}: {err}", file=sys.stderr, flush=True)
        return None
    if done.returncode != 0:
        print(f"could not requeue Slurm job {target}: {done.stderr.strip()}", file=sys.stderr, flush=True)
        return None
    return target
