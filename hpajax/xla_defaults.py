"""Faster XLA:CPU defaults for hpajax's CNN, applied through ``XLA_FLAGS``.

jaxlib 0.10's XLA:CPU hands every convolution and dot to YNNPACK (the
``individual_convolution`` and ``individual_dot`` YNN fusion types are on by
default, next to ``reduce``, although the flag's help says the default list
is empty), and YNNPACK is slow at this model's convolutions, above all their
weight gradients. Taking those two types out of the list (``reduce`` stays:
it helps the BatchNorm statistics) makes the model's training and inference
steps several times faster on the CPU; no other flag tried did better. The
measurements: see BENCHMARKS.md, section "Measurements behind the defaults".

Call ``apply_cpu_defaults()`` before the first JAX computation, e.g. at the
top of a ``main``. Importing jax, flax and optax first is fine: XLA reads
``XLA_FLAGS`` once, when JAX initializes its backends on first use (checked
with jax 0.10.2); flags set after that are silently ignored.

The flags only matter to the XLA:CPU compiler, but XLA aborts the process on
a flag name it does not know, and a GPU or TPU plugin carries its own copy of
XLA, possibly of another version, that may parse ``XLA_FLAGS`` too. So they
are only added when the CPU will do the work (no accelerator plugin
installed, ``JAX_PLATFORMS`` unset or starting with ``cpu``) and the
installed jaxlib is one they were measured on; on another jaxlib the CPU
runs with XLA's own defaults and a warning says so. A user's own
``XLA_FLAGS`` always win.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import warnings
from collections.abc import MutableMapping

CPU_XLA_FLAGS: tuple[str, ...] = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot",
)

# jaxlib versions [low, high) known to accept CPU_XLA_FLAGS. Widen after
# rerunning the benchmark on a new jaxlib; outside it nothing is added.
JAXLIB_RANGE: tuple[tuple[int, ...], tuple[int, ...]] = ((0, 10, 2), (0, 11))

# Modules whose presence means JAX may compute on (or at least load) a GPU or
# TPU backend. PJRT plugins registered under the ``jax_plugins`` namespace or
# entry-point group count too (see ``_accelerator_plugin_installed``).
_ACCELERATOR_MODULES: tuple[str, ...] = (
    "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def flag_name(flag: str) -> str:
    """``"--xla_foo=1"`` -> ``"xla_foo"``; the name XLA matches a flag by."""
    return flag.lstrip("-").split("=", 1)[0]


def _set_flag_names(xla_flags: str) -> set[str]:
    """Names of the flags already in an ``XLA_FLAGS`` string."""
    return {flag_name(token) for token in xla_flags.split() if re.match(r"-{1,2}\w", token)}


def one_off_compiler_options(environ: MutableMapping[str, str] = os.environ) -> dict:
    """``jax.jit`` compiler options of a program that runs once (the initializers): LLVM's
    optimization level 1, which compiles them in a fraction of the default's time, unless
    ``XLA_FLAGS`` names a level (the user's, or the test suite's, wins)."""
    if "xla_backend_optimization_level" in _set_flag_names(environ.get("XLA_FLAGS", "")):
        return {}
    return {"xla_backend_optimization_level": 1}


def installed_jaxlib() -> str | None:
    """The installed jaxlib's version string, or None without jaxlib."""
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def jaxlib_supported(version: str | None = None) -> bool:
    """Whether a jaxlib version (default: the installed one) lies in ``JAXLIB_RANGE``."""
    version = installed_jaxlib() if version is None else version
    if version is None:
        return False
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    low, high = JAXLIB_RANGE
    return low <= numbers < high


def _accelerator_plugin_installed() -> bool:
    """Whether a GPU/TPU backend is installed, found the way JAX finds them.

    Looks only at module specs and package metadata; imports nothing.
    """
    if any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES):
        return True
    if importlib.util.find_spec("jax_plugins") is not None:
        return True
    return bool(importlib.metadata.entry_points(group="jax_plugins"))


def cpu_is_compute_platform(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether JAX will surely compute on the CPU and nothing else parses
    ``XLA_FLAGS``: ``JAX_PLATFORMS`` (if set) names ``cpu`` first and no
    accelerator plugin is installed. An installed plugin counts against even
    under ``JAX_PLATFORMS=cpu``: JAX loads every discovered plugin library."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms and platforms.split(",")[0].strip().lower() != "cpu":
        return False
    return not _accelerator_plugin_installed()


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ,
                       jaxlib_version: str | None = None) -> list[str]:
    """Appends each of ``CPU_XLA_FLAGS`` whose name the user has not set to
    ``environ["XLA_FLAGS"]``; returns the flags it added.

    Adds nothing unless the CPU is the compute platform; on a CPU with a
    jaxlib (default: the installed one) outside ``JAXLIB_RANGE`` it adds
    nothing and warns. Must run before the first JAX computation.
    """
    if not cpu_is_compute_platform(environ):
        return []
    version = installed_jaxlib() if jaxlib_version is None else jaxlib_version
    if not jaxlib_supported(version):
        low, high = (".".join(map(str, v)) for v in JAXLIB_RANGE)
        warnings.warn(f"hpajax: jaxlib {version} is outside {low} <= jaxlib < {high}, where "
                      f"its CPU XLA flags were measured; XLA's own CPU defaults apply "
                      f"(training may be slower). constraints.txt pins the tested versions.",
                      stacklevel=2)
        return []
    current = environ.get("XLA_FLAGS", "")
    taken = _set_flag_names(current)
    added = [flag for flag in CPU_XLA_FLAGS if flag_name(flag) not in taken]
    if added:
        environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
    return added
