"""Preemption: SIGTERM or SIGUSR1 on any rank stops every rank at the next step boundary.

    install()                          # each rank, first thing
    stop = all_reduce_sum([..., pending()])[-1] > 0    # riding on the step's own all-reduce
    if stop: checkpoint, then raise Preempted(...)     # every rank, the same step

A signal only sets a flag. The flag rides on the all-reduce every micro batch already makes (the
non-finite-loss vote), so all ranks learn of it in the same step, write one checkpoint there and
exit with PREEMPTED_EXIT (75, EX_TEMPFAIL: try again). A second signal during the save changes
nothing: the flag is already set, and the checkpoint is atomic anyway.

SLURM sends SIGUSR1 ``--signal=USR1@120`` seconds before the time limit (launch/slurm.sbatch,
which then requeues the job) and SIGTERM on preemption, to every process of the job. Loader
workers ignore SIGUSR1. They cannot ignore SIGTERM (torch's and DALI's pools stop their workers
with it), so a SIGTERM that reaches them kills them: the next batch a rank asks for then fails,
and with a stop pending that is a ``LoaderLost``: the ranks vote it like the stop itself, drop
the unfinished step and checkpoint at the step boundary before it. Killed during validation, the
ranks finish validation without it, agree, and checkpoint at the end of the epoch's training.
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


class LoaderLost(Exception):
    """A stop is pending and some rank's loader died (its workers got the SIGTERM too)."""


def record_signal(signum: int) -> None:
    """What the handler does, for a handler that does more (fishscale train --nproc N forwards)."""
    _handler(signum, None)


def _handler(signum, frame) -> None:
    if not _received:
        # torch's DataLoader raises from its SIGCHLD handler, wherever the rank is (mid-checkpoint
        # too), when a worker dies, as they do when the SIGTERM reached them as well; from now on
        # the next batch reports it instead (LoaderLost), at a place where the ranks can agree
        signal.signal(signal.SIGCHLD, _ignore)
    _received.append(signal.Signals(signum).name)


def _ignore(signum, frame) -> None:
    """A Python-level no-op (not SIG_DFL: a SIGCHLD already on its way would then be reported as
    'ignored due to race condition')."""


def install() -> dict:
    """Stop signals set the flag from now on; returns the handlers they had (for ``restore``)."""
    return {sig: signal.signal(sig, _handler) for sig in STOP_SIGNALS}


def restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


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
    """worker_init_fn of loader workers: SIGUSR1 (which would kill them) is the rank's business."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def record(stop: Preempted) -> None:
    """Tell the job script (launch/slurm.sbatch reads $FISHSCALE_PREEMPTED_FILE) to requeue."""
    path = os.environ.get(PREEMPTED_FILE_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{stop}\n")


@contextmanager
def workers_ignore_usr1() -> Iterator[None]:
    """Ignore SIGUSR1 while worker processes start (fork or spawn): they inherit the ignoring.
    A SIGUSR1 in this short window is lost; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():     # only the main thread may
        yield
        return
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)
