"""Checks the backbone test files share: inputs, traced variables and dtypes, logits and
running statistics, remat's checkpoints and training steps, dropout and stochastic depth.

Every backbone is a Flax module applied as ``apply(variables, x, train=...)`` that gives
28 logits by default; those with BatchNorm keep a ``batch_stats`` collection beside
``params``, the others (ConvNeXt, ViT) have ``params`` only.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 28
FLOAT32 = {jnp.dtype(jnp.float32)}


def images(batch: int, side: int, channels: int = 4, seed: int = 0,
           minval: float = 0.0) -> jax.Array:
    """Random float32 images in [``minval``, 1]."""
    return jax.random.uniform(jax.random.key(seed), (batch, side, side, channels),
                              minval=minval)


def abstract_init(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """Shapes and dtypes of ``model``'s variables for inputs of ``shape`` (nothing compiles)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def initial_variables(model: nn.Module, x: jax.Array, seed: int = 1) -> dict:
    """``model``'s initial variables for ``x`` (compiled)."""
    return jax.jit(lambda x: model.init(jax.random.key(seed), x, train=False))(x)


def count(tree) -> int:
    """The number of values in ``tree``'s leaves (arrays or shapes)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def traced_forward(model: nn.Module, shape: tuple[int, ...], train: bool = False
                   ) -> tuple[dict, jax.ShapeDtypeStruct, dict]:
    """Traced variables, logits and mutable state (updated ``batch_stats``, every layer's
    output under ``intermediates``) for inputs of ``shape``; nothing compiles."""
    variables = abstract_init(model, shape)
    logits, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=train, capture_intermediates=True,
                                 mutable=["batch_stats", "intermediates"]),
        variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    return variables, logits, state


def assert_float32_state(model: nn.Module, shape: tuple[int, ...], train: bool,
                         computes: dict[str, jnp.dtype]) -> dict:
    """Traced at ``shape``: [batch, 28] float32 logits; float32 variables and, with BatchNorm,
    updated statistics; the output of each layer of ``computes`` (a "/"-separated path
    into the intermediates) in its dtype. Returns the traced variables."""
    variables, logits, state = traced_forward(model, shape, train)
    assert (logits.shape, logits.dtype) == ((shape[0], NUM_CLASSES), jnp.float32)
    trees = [variables] + ([state["batch_stats"]] if "batch_stats" in variables else [])
    for tree in trees:
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == FLOAT32
    for path, dtype in computes.items():
        layer = state["intermediates"]
        for name in path.split("/"):
            layer = layer[name]
        assert layer["__call__"][0].dtype == dtype, path
    return variables


def _apply(model: nn.Module, variables: dict, x: jax.Array, rngs: dict, train: bool):
    return model.apply(variables, x, train=train, mutable=["batch_stats"], rngs=rngs)


_compiled_apply = jax.jit(_apply, static_argnames=("model", "train"))


def forward(model: nn.Module, variables: dict, x: jax.Array, train: bool,
            rngs: dict | None = None, jit: bool = True) -> tuple[jax.Array, dict]:
    """``model``'s logits and mutable collections as the trainer applies it (``batch_stats``
    mutable, updated in training only): compiled once per model and mode, or op by op
    (``jit=False``: each op's program is cached, for a model that compiles slower than
    it runs)."""
    return (_compiled_apply if jit else _apply)(model, variables, x, rngs or {}, train=train)


def logits_of(model: nn.Module, variables: dict, x: jax.Array, train: bool,
           rngs: dict | None = None, jit: bool = True) -> np.ndarray:
    """``forward``'s logits, as NumPy."""
    return np.asarray(forward(model, variables, x, train, rngs, jit)[0])


def assert_logits_and_statistics(logits: jax.Array, updates: dict, variables: dict,
                                 train: bool) -> None:
    """[batch, 28] finite float32 logits; with BatchNorm, every running statistic of
    ``variables`` updated in training and none in eval; without, no updates at all."""
    assert (logits.shape, logits.dtype) == ((logits.shape[0], NUM_CLASSES), jnp.float32)
    assert np.isfinite(logits).all()
    if "batch_stats" not in variables:
        assert dict(updates) == {}
        return
    moved = jax.tree.map(lambda new, old: not np.array_equal(new, old),
                         updates["batch_stats"], variables["batch_stats"])
    assert set(jax.tree.leaves(moved)) == {train}  # the statistics move in training only


def remat_checkpoints(model: nn.Module, variables: dict, x: jax.Array) -> int:
    """Top-level ``jax.checkpoint`` (remat) calls in ``model``'s traced eval forward pass:
    one per block that ``remat=True`` wraps. ``variables`` and ``x`` may be shapes."""
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return sum(any(word in eqn.primitive.name for word in ("remat", "checkpoint"))
               for eqn in jaxpr.jaxpr.eqns)


def assert_same_variables(model: nn.Module, variables: dict, shape: tuple[int, ...]) -> None:
    """``model``'s variables for inputs of ``shape`` have the names, shapes and dtypes of
    ``variables`` (those of the same model without remat, say)."""
    def described(tree):
        return jax.tree.map(lambda leaf: (leaf.shape, jnp.dtype(leaf.dtype)), tree)

    assert described(abstract_init(model, shape)) == described(variables)


def weighted_sum(logits: jax.Array) -> jax.Array:
    """A loss that weighs each class differently: sum of logit k times k / classes."""
    classes = logits.shape[-1]
    return jnp.sum(logits * jnp.arange(float(classes)) / classes)


def mean_square(logits: jax.Array) -> jax.Array:
    """A loss of every logit alike: their mean square."""
    return jnp.mean(logits ** 2)


class Step(NamedTuple):
    """What one training step computes."""
    loss: jax.Array
    logits: jax.Array
    grads: dict
    batch_stats: dict  # updated; empty without BatchNorm


def _training_step(model: nn.Module, loss: Callable, variables: dict, x: jax.Array,
                   rngs: dict) -> Step:
    def objective(params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"], rngs=rngs)
        return loss(logits), (logits, updates.get("batch_stats", {}))

    (value, (logits, stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        variables["params"])
    return Step(value, logits, grads, stats)


training_step = jax.jit(_training_step, static_argnames=("model", "loss"))


def assert_same_training_step(plain: nn.Module, remat: nn.Module, variables: dict,
                              x: jax.Array, *, rtol: float, atol: float | None = None,
                              loss: Callable = weighted_sum, rngs: dict | None = None
                              ) -> tuple[Step, Step]:
    """A compiled training step of ``remat`` and of ``plain`` from ``variables`` (drawing
    from ``rngs``): the same loss, logits, gradients and updated statistics, each array
    to ``rtol`` and ``atol`` (by default ``rtol`` of its largest magnitude in ``plain``'s
    step). Returns the two steps, ``remat``'s first."""
    got, want = (training_step(model, loss, variables, x, rngs or {}) for model in (remat, plain))

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=rtol,
                                   atol=rtol * np.abs(b).max() if atol is None else atol)

    jax.tree.map(close, got, want)
    return got, want


def assert_draws_only_with_rng(plain: nn.Module, dropped: nn.Module, variables: dict,
                               x: jax.Array, jit: bool = True) -> None:
    """``dropped``, ``plain`` with a dropout or stochastic-depth rate: ``plain``'s logits bit
    for bit in eval (with a "dropout" rng or without) and in training without one
    (BatchNorm recalibration; without BatchNorm, training is then eval, bit for bit); in
    training with an rng, finite logits more than 1e-3 away from those, and from another
    rng's."""
    def run(model, train, seed=None):
        rngs = None if seed is None else {"dropout": jax.random.key(seed)}
        return logits_of(model, variables, x, train, rngs, jit)

    plain_eval, plain_train = run(plain, False), run(plain, True)
    for seed in (None, 0):
        np.testing.assert_array_equal(run(dropped, False, seed), plain_eval)
    np.testing.assert_array_equal(run(dropped, True), plain_train)
    if "batch_stats" not in variables:
        np.testing.assert_array_equal(plain_train, plain_eval)
    first, second = run(dropped, True, 0), run(dropped, True, 1)
    assert np.isfinite(first).all()
    assert np.abs(first - plain_train).max() > 1e-3
    assert np.abs(first - second).max() > 1e-3
