"""Preemption: SIGTERM or SIGUSR1 on any rank stops every rank at the next step boundary.

    install()                          # each rank, before training
    stop = all_reduce_sum([..., pending()])[-1] > 0    # riding on the step's own all-reduce
    if stop: checkpoint, then raise Preempted(...)     # every rank, the same step

A signal only sets a flag. The flag rides on the all-reduce every micro batch already makes (the
non-finite-loss vote), so all ranks learn of it in the same step, write one checkpoint there and
exit with PREEMPTED_EXIT (75, EX_TEMPFAIL: try again). A second signal during the save changes
nothing: the flag is already set, and the checkpoint is atomic anyway.

SLURM sends SIGUSR1 ``--signal=USR1@120`` seconds before the time limit (launch/slurm.sbatch,
which then requeues the job) and SIGTERM on preemption. Loader workers ignore both (they stop
when their rank does): a signal to the whole process group must not kill them mid-epoch.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

PREEMPTED_EXIT = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_FILE_ENV = "FISHSCALE_PREEMPTED_FILE"
_received: list[str] = []


class Preempted(Exception):
    def __init__(self, signal_name: str, tag: str, step: int):
        super().__init__(f"stopped by {signal_name} at step {step}: checkpoint {tag} written; the same command "
                         f"resumes there (exit {PREEMPTED_EXIT})")
        self.tag, self.step = tag, step


def _handler(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)


def install() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)


def ignore_from_now() -> None:
    """On the way out: later stop signals (a launcher keeps forwarding them) must not kill the
    process while it exits; Python resets its own handlers to the default at exit, not SIG_IGN."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def pending() -> float:
    """1.0 once this rank got a stop signal (summed over ranks: > 0 means stop)."""
    return 1.0 if _received else 0.0


def signal_name() -> str:
    return _received[0] if _received else "SIGTERM or SIGUSR1 on another rank"


def ignore_in_worker(*_args) -> None:
    """worker_init_fn of loader workers: the rank decides when they stop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def record(stop: Preempted) -> None:
    """Tell the job script (launch/slurm.sbatch reads $FISHSCALE_PREEMPTED_FILE) to requeue."""
    path = os.environ.get(PREEMPTED_FILE_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{stop}\n")


@contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """Ignore SIGTERM / SIGUSR1 while worker processes start (fork or spawn): they inherit the
    ignoring. A signal in this short window is lost; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():     # only the main thread may
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
