"""Worker processes for one run: forked, deaf to Ctrl-C, dying with their parent, stopped at once with the run.

The parent alone handles Ctrl-C: workers ignore SIGINT, and when the run stops (Ctrl-C or an error) the parent
terminates them instead of waiting for them to finish or to notice. A worker asks the kernel (Linux
``PR_SET_PDEATHSIG``) to be killed when its parent dies, so a ``kill -9`` of the parent leaves no worker
running on; the spill files they wrote are removed by the next run into the same folder (``out_folder``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.pool
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TypeVar

PR_SET_PDEATHSIG = 1  # linux/prctl.h
R = TypeVar("R")  # what one job returns


def _die_with_parent(parent: int) -> None:
    """In a worker: no Ctrl-C of its own, and SIGKILL when the parent process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's own checks remain
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


@contextlib.contextmanager
def worker_pool(size: int) -> Iterator[multiprocessing.pool.Pool]:
    """A pool of ``size`` forked workers, terminated at once if the ``with`` body stops early."""
    pool = multiprocessing.get_context("fork").Pool(size, initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        # Stopping: a second Ctrl-C must not interrupt the stop itself (a Python-level handler, which child
        # processes do not inherit, unlike SIG_IGN).
        previous = signal.signal(signal.SIGINT, _hold)
        try:
            pool.terminate()
            pool.join()
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    pool.close()
    pool.join()


def _hold(signum: int, frame: FrameType | None) -> None:
    """SIGINT while the workers are being stopped: already stopping."""


def run_jobs(
    fn: Callable[..., R], jobs: Sequence[tuple[object, ...]], tick: Callable[[], None] | None = None
) -> list[R]:
    """``fn(*job)`` for each job, one worker each, side by side; ``tick`` is called about five times a second
    while they run (progress). A worker's error is raised here; Ctrl-C stops every worker at once."""
    with worker_pool(len(jobs)) as pool:
        pending = [pool.apply_async(fn, job) for job in jobs]
        while not all(p.ready() for p in pending):
            next(p for p in pending if not p.ready()).wait(0.2)
            if tick is not None:
                tick()
        return [p.get() for p in pending]
