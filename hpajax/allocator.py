"""glibc malloc settings that keep large freed buffers for reuse.

By default glibc hands every allocation above a few MiB (and any made by a
thread other than the main one above 64 MiB, its heap size) straight to
``mmap`` and unmaps it on ``free``. XLA:CPU allocates each step's
activations, the Grain pipeline each batch, afresh: so every step the kernel
maps, faults in and zeroes the same hundreds of MiB again (40,000 to
600,000 page faults per train step here). Measured on the 2-core
development VM (``experiments/bench_train.py`` and ``bench_data.py``,
recorded in BENCHMARKS.md), keeping freed memory in the heap makes the
training pipeline 1.9x faster and inference 1.2-1.3x faster at batch 32 or
256 px; training steps change within noise.

It takes all three settings: one arena (so XLA's threads allocate from the
main heap, which has no size cap), and mmap and trim thresholds of 1 GiB
(so buffers come from the heap and go back to it). The cost: the process
keeps its peak heap size instead of returning freed memory to the system.
The same settings as environment variables, for any program started with
them: ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=1073741824``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

from hpajax import xla_defaults

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
KEEP_FREED_MEMORY: dict[int, int] = {
    _M_ARENA_MAX: 1,
    _M_MMAP_THRESHOLD: 1 << 30,
    _M_TRIM_THRESHOLD: 1 << 30,
}

# Environment variables through which a user has already chosen glibc's
# malloc behaviour; any of them set means hands off.
USER_SETTINGS: tuple[str, ...] = (
    "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_", "LD_PRELOAD")


def user_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment already tunes malloc (glibc variables, a glibc
    malloc tunable, or a preloaded library such as jemalloc or tcmalloc)."""
    return (any(environ.get(name) for name in USER_SETTINGS)
            or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""))


def _glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (which has ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Applies ``KEEP_FREED_MEMORY`` with ``mallopt``; returns whether it did.

    Does nothing off glibc, when ``user_configured(environ)``, or unless the
    CPU does the computing (``xla_defaults.cpu_is_compute_platform``): the
    gains were measured on a CPU host; on a GPU or TPU host try the
    environment variables above and measure. Call it early, before JAX
    starts its threads: threads that already have an arena keep it.
    """
    wanted = xla_defaults.cpu_is_compute_platform(environ) and not user_configured(environ)
    libc = _glibc() if wanted else None
    if libc is None:
        return False
    return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
               for param, value in KEEP_FREED_MEMORY.items())
