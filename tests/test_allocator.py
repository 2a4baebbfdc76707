"""Tests for hpajax.allocator (glibc malloc settings)."""

import os
import subprocess
import sys

import pytest

from hpajax import allocator

# In a fresh process (argv[1] == "keep": with keep_freed_memory() first), a
# worker thread, as XLA's are, allocates and fills a 96 MiB buffer five times
# and prints the page faults of the last four rounds.
_FAULTS_PROBE = """
import resource, sys, threading
import numpy as np
from hpajax import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
def rounds():
    for i in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        np.empty(96 << 20, np.uint8).fill(1)
        if i:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=rounds)
thread.start()
thread.join()
print(applied, sum(faults))
"""


def faults_probe(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items()
           if k not in allocator.USER_SETTINGS and k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
    result = subprocess.run([sys.executable, "-c", _FAULTS_PROBE, mode], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    applied, faults = result.stdout.split()
    return applied, int(faults)


def test_keep_freed_memory_stops_page_faults_on_reused_buffers():
    """Without the settings each round maps and faults in 96 MiB anew; with
    them the freed buffer is reused."""
    applied, tuned = faults_probe("keep")
    _, default = faults_probe("default")
    assert applied == "True"
    assert tuned <= 10
    assert default >= 40 and default > 4 * tuned  # 96 MiB is 48 pages even at 2 MiB per page


@pytest.mark.parametrize("environ", [
    {"MALLOC_ARENA_MAX": "4"},
    {"MALLOC_MMAP_THRESHOLD_": "1048576"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
    {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
])
def test_user_malloc_settings_are_left_alone(environ):
    assert allocator.user_configured(environ)
    assert allocator.keep_freed_memory(environ) is False


def test_other_glibc_tunables_are_not_malloc_settings():
    assert not allocator.user_configured({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert not allocator.user_configured({"MALLOC_ARENA_MAX": ""})


@pytest.mark.parametrize("platforms", ["cuda", "tpu,cpu"])
def test_not_applied_off_the_cpu(platforms):
    """Measured on a CPU host only; accelerator hosts keep glibc's defaults."""
    assert allocator.keep_freed_memory({"JAX_PLATFORMS": platforms}) is False
