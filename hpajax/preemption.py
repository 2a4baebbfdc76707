"""SIGTERM as a request to save and stop: how clusters and spot VMs preempt.

The training loop polls ``requested(step)`` after every step. A single
process catches SIGTERM itself. Under ``jax.distributed`` the processes must
agree on the step to stop at, or the collective checkpoint write would hang:
there the handler is left to JAX's preemption service, and Orbax's
preemption sync point (``reached_preemption``) says when every process stops.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import jax


class Preemption:
    """Turns SIGTERM into a flag; restores the previous handler on ``close``."""

    def __init__(self, sync_point: Callable[[int], bool]):
        self._sync_point = sync_point
        self._signalled = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self._signalled = True

    def requested(self, step: int) -> bool:
        """Whether to save a checkpoint at ``step`` and stop."""
        return self._signalled or self._sync_point(step)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
