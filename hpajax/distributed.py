"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` when, and only when, needed.

Every process of a multi-host run executes the same program: each drives its
local devices, and JAX's distributed runtime (a coordinator service run by
process 0) lets the jitted steps span all devices of all processes. It must
be initialized before anything touches JAX devices.
"""

from __future__ import annotations

import warnings

import jax


def cluster_detected() -> bool:
    """Whether ``jax.distributed.initialize()`` with no arguments finds its settings.

    Asks JAX's own cluster detectors (SLURM, Open MPI, Cloud TPU on GCE or
    GKE, Kubernetes with ``jax[k8s]``), the test ``initialize()`` makes,
    skipping the opt-in ones (mpi4py) as it does. These detectors live in a
    private module (checked with jax 0.10.2); on a jax where it moved, a
    warning says that no cluster can be detected and the explicit flags are
    needed.
    """
    try:
        from jax._src import clusters  # noqa: PLC0415  (importing jax registers them all)

        envs = clusters.ClusterEnv._cluster_types  # noqa: SLF001
    except (ImportError, AttributeError) as e:
        warnings.warn(f"hpajax: jax {jax.__version__} has no jax._src.clusters.ClusterEnv "
                      f"({e}): clusters (SLURM, TPU pods) are not detected; pass "
                      "--coordinator_address, --num_processes and --process_id", stacklevel=2)
        return False
    return any(not env.opt_in_only_method and env.is_env_present() for env in envs)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to a multi-process JAX run, or does nothing on a lone machine.

    - With any of the arguments given (the ``--coordinator_address``,
      ``--num_processes``, ``--process_id`` flags), calls
      ``jax.distributed.initialize`` with them; JAX takes the missing ones
      from a detected cluster or says which is missing.
    - With none given, calls it with no arguments when a cluster environment
      is detected (SLURM, Cloud TPU pod slice, GKE...; see
      ``cluster_detected``), so that it auto-configures.
    - Otherwise does nothing: a plain single-machine run needs no
      coordinator, and ``initialize()`` without one would fail.

    Also selects gloo for cross-process collectives on CPU (the default of
    jax 0.10, but not of every version; without an implementation, CPU
    computations cannot span processes). Must run before anything touches
    JAX devices: the distributed runtime has to exist when the backends are
    created.
    """
    given = (coordinator_address, num_processes, process_id)
    if all(v is None for v in given) and not cluster_detected():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
