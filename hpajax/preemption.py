"""SIGTERM as a request to save and stop: how clusters and spot VMs preempt.

The training loop polls ``Preemption.requested(step)`` after every step. A
single process catches SIGTERM itself, from ``catch_sigterm()`` on (the first
thing ``main`` does, so a SIGTERM during start-up is not lost either; one
that arrives while Python is still importing ends the process, with nothing
to lose yet). Under ``jax.distributed`` the processes must agree on the step
to stop at, or the collective checkpoint write would hang: there the signal
is left to JAX's preemption service, and Orbax's preemption sync point says
when every process stops.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import jax

_signalled = threading.Event()


class Preempted(Exception):
    """Training saved a checkpoint and stopped on request; rerunning resumes it."""


def _handle(signum, frame) -> None:
    del signum, frame
    _signalled.set()


def catch_sigterm() -> bool:
    """Turns SIGTERM into a flag in a single-process run; returns whether it did."""
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not _handle:
        signal.signal(signal.SIGTERM, _handle)
    return True


class Preemption:
    """Whether to save and stop; catches SIGTERM until ``close`` (restores the old handler)."""

    def __init__(self, sync_point: Callable[[int], bool]):
        self._sync_point = sync_point
        self._previous = signal.getsignal(signal.SIGTERM)
        if not catch_sigterm():
            self._previous = None

    def requested(self, step: int) -> bool:
        """Whether to save a checkpoint at ``step`` and stop."""
        return _signalled.is_set() or self._sync_point(step)

    def close(self) -> None:
        if self._previous is not None and self._previous is not _handle:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
