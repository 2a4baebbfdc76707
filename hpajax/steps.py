"""The train state and the three pure steps of a run, jitted over a device mesh.

One ``Mesh`` over all devices with a ``data`` axis: batches are sharded on
it, the state is replicated, and XLA inserts the cross-device reductions
(BatchNorm statistics and gradients are those of the global batch). The
train step donates the state; its loss sums stay on device until the loop
fetches them. Nothing here reads or writes files or knows about the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpajax import augment, losses, models, xla_defaults
from hpajax import config as config_lib
from hpajax import tta as tta_lib
from hpajax.models.layers import HEAD_NAMES


HOST_KEYS = ("index", "source")  # batch keys of where each sample came from: host logs only


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in every checkpoint."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    plateau: Any  # optax.contrib.reduce_on_plateau state: the LR scale and its counters
    rng: jax.Array  # raw PRNG key; step t augments with fold_in(rng, t)
    # With config.ema_decay: the moving averages of the weights and of their BatchNorm
    # statistics, {"params", "batch_stats"}, the model evaluated and served; None without
    # (and then absent from checkpoints).
    ema: Any = None


@dataclasses.dataclass(frozen=True)
class Steps:
    """A run's model, optimizer and jitted steps over one mesh."""

    config: ml_collections.ConfigDict
    image_shape: tuple[int, int, int]  # the model's input [S, S, C]
    mesh: Mesh
    model: Any  # a flax module from models.create
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    train: Any  # (state, batch, sums) -> (state, sums)
    eval: Any  # (state, batch) -> {"loss_sum", "count", "probs"}
    moments: Any  # (state, batch) -> each BatchNorm's batch mean and mean of squares
    init: Any  # seed -> the fresh TrainState

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))


def make_mesh(batch_size: int) -> Mesh:
    """A 1-D ``data`` mesh over every device; the batch must divide evenly."""
    devices = jax.devices()
    if batch_size % len(devices):
        raise ValueError(f"config.batch_size={batch_size} does not divide by the "
                         f"{len(devices)} devices; use a multiple of {len(devices)}")
    return Mesh(np.asarray(devices), ("data",))


SCHEDULES = ("plateau", "cosine", "step", "onecycle")  # config.optimizer.schedule


def learning_rate(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.ScalarOrSchedule:
    """``cfg.learning_rate`` under ``cfg.schedule``: a constant for "plateau" (whose rule
    scales the updates after evaluations, ``update_plateau``), else an optax schedule of
    the update count (0 for step 1)."""
    name, lr = cfg.get("schedule", "plateau"), cfg.learning_rate
    if name not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule={name!r}: choose one of "
                         + ", ".join(repr(s) for s in SCHEDULES))
    span = cfg.lr_decay_steps or total_steps if name in ("cosine", "onecycle") else 0
    if name == "cosine":
        if not 0 <= cfg.lr_warmup_steps < span:
            raise ValueError(f"config.optimizer.lr_warmup_steps={cfg.lr_warmup_steps}: must "
                             f"be 0 or more and below the {span} steps the schedule spans")
        return optax.warmup_cosine_decay_schedule(0.0, lr, cfg.lr_warmup_steps, span,
                                                  end_value=lr * cfg.lr_floor)
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(span, lr, cfg.onecycle_pct_start)
    if name == "step":
        if len(cfg.lr_boundaries) != len(cfg.lr_factors):
            raise ValueError(f"config.optimizer.lr_boundaries={tuple(cfg.lr_boundaries)} and "
                             f"lr_factors={tuple(cfg.lr_factors)}: one factor per boundary")
        return optax.piecewise_constant_schedule(lr, dict(zip(cfg.lr_boundaries,
                                                              cfg.lr_factors)))
    return lr


def learning_rate_at(config: ml_collections.ConfigDict, state: TrainState) -> float:
    """The learning rate of ``state``'s last update: the schedule's at the optimizer's
    update count (which skipped non-finite steps do not advance), times the plateau
    rule's scale."""
    lr = learning_rate(config.optimizer, config.total_steps)
    if callable(lr):
        (_, count), *_ = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")
        lr = lr(max(int(count) - 1, 0))
    return float(lr) * float(state.plateau.scale)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int = 0,
                   depths: dict[str, int] | None = None) -> optax.GradientTransformation:
    """Adam as the seed's Table 4, with decoupled weight decay, at ``learning_rate``'s
    schedule (over ``total_steps``).

    ``cfg.decay`` says what decays: "all" parameters (the seed's), or only
    "kernels", leaving BatchNorm scales and biases alone as pretrained
    backbones are fine-tuned. With ``cfg.layer_decay`` the updates of each
    top-level layer are scaled by its factor of ``_layer_decay`` (``depths``:
    ``layer_depths`` of the model's layers). With ``cfg.head_warmup_steps`` the backbone's
    updates are scaled by ``cfg.head_warmup_scale`` (0: frozen) for those
    first steps, so that a new head settles before pretrained layers move.
    """
    decay = cfg.get("decay", "all")
    if decay not in ("all", "kernels"):
        raise ValueError(f"config.optimizer.decay={decay!r}: choose 'all' or 'kernels'")
    mask = None if decay == "all" else _kernels
    tx = optax.adamw(learning_rate(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, mask=mask)
    if cfg.get("layer_decay", 0.0):
        tx = optax.chain(tx, _layer_decay(cfg.layer_decay, depths))
    warmup = cfg.get("head_warmup_steps", 0)
    if warmup < 0:
        raise ValueError(f"config.optimizer.head_warmup_steps={warmup}: must be 0 or more")
    if not warmup:
        return tx
    scale = cfg.head_warmup_scale
    backbone = optax.scale_by_schedule(lambda count: jnp.where(count < warmup, scale, 1.0))
    return optax.chain(tx, optax.masked(backbone, _outside_head))


def layer_depths(names: Iterable[str], layer_key: Callable[[str], tuple[int, ...]]
                 ) -> dict[str, int]:
    """Each top-level layer's depth: the rank of its ``layer_key`` (the backbone's order
    of its layers) among the distinct keys; 0 is the stem, the largest the head."""
    keys = {name: layer_key(name) for name in names}
    ranks = {key: rank for rank, key in enumerate(sorted(set(keys.values())))}
    return {name: ranks[key] for name, key in keys.items()}


def _layer_decay(decay: float, depths: dict[str, int] | None) -> optax.GradientTransformation:
    """Layer-wise learning-rate decay: the updates of a top-level layer at depth ``d``
    scaled by ``decay ** (D - d)``, ``D`` the deepest's (the head: 1), one ``optax.scale``
    per depth through ``optax.multi_transform``."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"config.optimizer.layer_decay={decay}: choose 0 (off) or a value "
                         "in (0, 1], e.g. 0.75")
    if depths is None:
        raise ValueError("config.optimizer.layer_decay is set but the model has no layer "
                         "order: use one of the backbones")
    top = max(depths.values())
    scales = {f"depth{d}": optax.scale(decay ** (top - d)) for d in set(depths.values())}
    return optax.multi_transform(scales, lambda params: {
        name: jax.tree.map(lambda _, d=depths[name]: f"depth{d}", tree)
        for name, tree in params.items()})


def _kernels(params: Any) -> Any:
    """True at the convolution and dense kernels of a parameter tree, False elsewhere."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def _outside_head(params: Any) -> Any:
    """True everywhere but under the backbone's head (``models.layers.HEAD_NAMES``)."""
    heads = [name for name in params if name in HEAD_NAMES]
    if not heads:
        raise ValueError("config.optimizer.head_warmup_steps is set but the model has no "
                         f"{' or '.join(HEAD_NAMES)} head to warm up: use one of the backbones")
    return {name: jax.tree.map(lambda _: name not in heads, tree)
            for name, tree in params.items()}


def input_shape(config: ml_collections.ConfigDict, image_size: int = 0
                ) -> tuple[int, int, int]:
    """The model's input [S, S, C]: ``config.data.input_size``, else the store's ``image_size``."""
    size = config.data.input_size or image_size
    if size <= 0:
        raise ValueError("config.data.input_size is unset and there is no store to take it "
                         "from; set --config.data.input_size")
    if config.augment.get("crop", False) and image_size and not size < image_size:
        raise ValueError(f"config.augment.crop needs config.data.input_size below the store's "
                         f"{image_size} px images (the crops' side), got {size}")
    return size, size, len(config.data.channels)


def resize(images: jax.Array, size: int, *, as_matrices: bool = False) -> jax.Array:
    """Float images [B, H, W, C] at ``size`` x ``size`` (antialiased linear), if not already.

    Lets one 512 px store feed the seed's 128/256/512 px input-size sweep;
    training augments at the store's resolution first, then resizes.
    ``as_matrices`` applies the same linear map as two products with fixed
    matrices (``resize_matrix``): the form exporters convert.
    """
    if images.shape[1:3] == (size, size):
        return images
    if as_matrices:
        rows, cols = resize_matrix(images.shape[1], size), resize_matrix(images.shape[2], size)
        images = jnp.einsum("sh,bhwc->bswc", rows, images, precision="highest")
        return jnp.einsum("tw,bswc->bstc", cols, images, precision="highest")
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                            "linear", antialias=True)


def resize_matrix(length: int, size: int) -> np.ndarray:
    """The [size, length] matrix of ``resize`` along one axis of ``length`` px: its
    response to each unit impulse (exact: the weights times 1, plus zeros), computed
    while tracing into a constant."""
    with jax.ensure_compile_time_eval():
        eye = jnp.eye(length, dtype=jnp.float32)
        return np.asarray(jax.image.resize(eye, (size, length), "linear", antialias=True))


# The input statistics of config.model.normalize: per channel (red, green, blue, yellow),
# yellow's the mean of red's and green's as the stem's yellow filters (models/weights.py).
# "imagenet": torchvision's ImageNet statistics; "inception": [0, 1] to [-1, 1], as
# Inception-v3's transform_input, Xception's and timm's ViTs' weights expect.
STATISTICS = {"imagenet": ((0.485, 0.456, 0.406, 0.4705), (0.229, 0.224, 0.225, 0.2265)),
              "inception": ((0.5,) * 4, (0.5,) * 4)}
Normalization = tuple[np.ndarray, np.ndarray] | None  # per-channel (mean, std), or none


def normalization_name(config: ml_collections.ConfigDict) -> str:
    """``config.model.normalize`` (``config.NORMALIZATIONS``); unset, it is the one the
    backbone's reference weights expect for a run that starts from them
    (``model.init_from``), else "unit" (the seed's ÷255 only)."""
    name = config.model.get("normalize", "")
    if not name:
        start = config.model.get("init_from") and config.model.name in config_lib.BACKBONES
        name = config_lib.BACKBONES[config.model.name][1] if start else "unit"
    if name not in config_lib.NORMALIZATIONS:
        raise ValueError(f"config.model.normalize={name!r}: choose one of "
                         f"{', '.join(config_lib.NORMALIZATIONS)}")
    return name


def input_normalization(config: ml_collections.ConfigDict) -> Normalization:
    """The per-channel (mean, std) the inputs in [0, 1] are normalized with, or None."""
    name = normalization_name(config)
    if name == "unit":
        return None
    channels = list(config.data.channels)
    return tuple(np.asarray(values, np.float32)[channels] for values in STATISTICS[name])


def normalized(images: jax.Array, norm: Normalization) -> jax.Array:
    """``(images - mean) / std`` per channel, or ``images`` unchanged without a normalization."""
    if norm is None:
        return images
    mean, std = norm
    return (images - mean) / std


def model_input(images: jax.Array, size: int, norm: Normalization = None, *,
                portable: bool = False) -> jax.Array:
    """Un-augmented uint8 images as the model sees them: float at ``size``, normalized
    (``portable``: resized by ``resize``'s matrices)."""
    return normalized(resize(augment.to_float(images), size, as_matrices=portable), norm)


def train_step(state: TrainState, batch: dict, sums: dict, *, model, tx, loss_fn,
               aug_cfg, size: int, norm: Normalization = None,
               ema_decay: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer step on an augmented global batch; adds its loss to ``sums``.

    A NaN/Inf loss, gradient or update leaves the state as it was (the step
    counter still advances); ``sums`` counts such steps and remembers the
    first, and the loop decides on the host whether to stop or go on.
    """
    key = jax.random.fold_in(state.rng, state.step)
    crop_size = size if aug_cfg.get("crop", False) else None
    images = normalized(resize(augment.augment(key, batch["image"], aug_cfg, crop_size), size),
                        norm)
    labels = batch["label"].astype(jnp.float32)

    def compute(params):
        logits, updated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.fold_in(key, 1)})
        return loss_fn(logits, labels).mean(), updated.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    updated = state.replace(params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
    if state.ema is not None:
        updated = updated.replace(ema=_ema_update(state.ema, updated, state.step, ema_decay))
    finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updates)
    # One cond, not a select per leaf: XLA:CPU compiles those of a deep backbone very slowly
    # (BENCHMARKS.md, "Backbones").
    state = jax.lax.cond(finite, lambda: updated, lambda: state)
    state = state.replace(step=state.step + 1)
    return state, {"loss": sums["loss"] + jnp.where(finite, loss, 0.0),
                   "steps": sums["steps"] + finite,
                   "nonfinite": sums["nonfinite"] + ~finite,
                   "first_nonfinite": jnp.where((sums["first_nonfinite"] == 0) & ~finite,
                                                state.step, sums["first_nonfinite"])}


def _ema_update(ema: dict, state: TrainState, step: jax.Array, decay: float) -> dict:
    """The moving averages after a step: ``d * ema + (1 - d) * new`` of the weights and of
    the BatchNorm running statistics.

    ``d`` is ``min(decay, (1 + t) / (10 + t))`` at step ``t`` (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``), so the average leaves
    the initial weights within the first steps instead of after ~1/(1 - decay).
    The statistics are averaged with the weights (as timm's ``ModelEmaV2``
    averages the whole state dict) so that the served model has statistics of
    its training even without ``config.bn_recalibration_batches``, which
    replaces them with exact ones before each evaluation.
    """
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    average = lambda old, new: d * old + (1.0 - d) * new  # noqa: E731
    return {"params": jax.tree.map(average, ema["params"], state.params),
            "batch_stats": jax.tree.map(average, ema["batch_stats"], state.batch_stats)}


def served(state: TrainState) -> TrainState:
    """The state whose weights are evaluated and served: the EMA's, if the run keeps one."""
    if state.ema is None:
        return state
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def with_served_batch_stats(state: TrainState, batch_stats: Any) -> TrainState:
    """``state`` with recalibrated BatchNorm statistics for its served weights."""
    if state.ema is None:
        return state.replace(batch_stats=batch_stats)
    return state.replace(ema={**state.ema, "batch_stats": batch_stats})


def _all_finite(tree: Any) -> jax.Array:
    """Whether every element is finite (a norm would overflow on huge finite values)."""
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


_PROB_EPS = 1e-7  # reduced probabilities are clipped to [eps, 1 - eps] for their loss


def infer(variables: dict, images: jax.Array, *, model, size: int, norm: Normalization = None,
          tta: int = 1, tta_reduce: str = "mean", crop: bool = False,
          portable: bool = False) -> tuple[jax.Array, jax.Array]:
    """Logits and probabilities [B, K] of un-augmented uint8 images [B, H, W, C].

    The one function between a batch and its probabilities: evaluation and
    prediction run it jitted (``eval_step``), export (``hpajax.export``) with
    the weights baked in. With ``tta`` > 1 or ``crop`` the probabilities are
    reduced over the views (``hpajax.tta``: dihedral transforms, and the grid
    of crops covering the stored image) and the logits are those of the
    reduced probabilities, clipped to stay finite. ``portable``: the same
    values from operations every exporter converts (views unrolled, resize
    as matrices).
    """
    apply = lambda images: model.apply(  # noqa: E731
        variables, model_input(images, size, norm, portable=portable), train=False)
    if tta == 1 and not crop:
        logits = apply(images)
        return logits, jax.nn.sigmoid(logits)
    probs = tta_lib.predict_views(lambda images: jax.nn.sigmoid(apply(images)), images, tta,
                                  size if crop else None, tta_reduce, unrolled=portable)
    clipped = jnp.clip(probs, _PROB_EPS, 1.0 - _PROB_EPS)
    return jnp.log(clipped) - jnp.log1p(-clipped), probs


def infer_options(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]
                  ) -> dict:
    """``infer``'s keyword arguments for a run of ``config`` at the model input
    ``image_shape``, but the model: what evaluation and export (``hpajax.export``) pass."""
    return dict(size=image_shape[0], norm=input_normalization(config),
                tta=config.get("tta", 1), tta_reduce=config.get("tta_reduce", "mean"),
                crop=bool(config.augment.get("crop", False)))


def eval_step(state: TrainState, batch: dict, *, model, loss_fn, size: int,
              norm: Normalization = None, tta: int = 1, tta_reduce: str = "mean",
              crop: bool = False) -> dict:
    """Probabilities (``infer``'s) and the masked loss sum of an un-augmented batch."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, probs = infer(variables, batch["image"], model=model, size=size, norm=norm,
                          tta=tta, tta_reduce=tta_reduce, crop=crop)
    mask = batch["mask"]
    loss = loss_fn(logits, batch["label"].astype(jnp.float32), mask)
    return {"loss_sum": jnp.where(mask, loss, 0.0).sum(), "count": mask.sum(), "probs": probs}


def moments_step(state: TrainState, batch: dict, *, model, size: int,
                 norm: Normalization = None, crop: bool = False) -> dict:
    """Each BatchNorm's batch mean and mean of squares, in training mode.

    With ``crop``, of the grid of crops that evaluation sees. No ``"dropout"``
    rng: dropout and stochastic depth are off (``models.layers.drawing``). A
    model without BatchNorm gives an empty dict.
    """
    images = batch["image"]
    if crop:
        images = tta_lib.views(images, 1, size).reshape(-1, size, size, images.shape[-1])
    _, updated = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             model_input(images, size, norm), train=True,
                             mutable=["batch_stats"])
    flat = traverse_util.flatten_dict(updated.get("batch_stats", {}))
    return {k: v + flat[k[:-1] + ("mean",)] ** 2 if k[-1] == "var" else v
            for k, v in flat.items()}


def batch_stats_from_moments(moments: dict, count: int) -> Any:
    """BatchNorm statistics from ``count`` summed ``moments_step`` outputs.

    The mean of each batch's means and of its means of squares, so the
    variance is that of the union of the batches.
    """
    avg = {k: v / count for k, v in moments.items()}
    stats = {k: v - avg[k[:-1] + ("mean",)] ** 2 if k[-1] == "var" else v
             for k, v in avg.items()}
    return traverse_util.unflatten_dict(stats)


def ema_decay(config: ml_collections.ConfigDict) -> float:
    """``config.ema_decay``, checked: 0 (no moving average) or in (0, 1)."""
    decay = config.get("ema_decay", 0.0)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.ema_decay={decay}: choose 0 (off) or a value in (0, 1), "
                         "e.g. 0.999")
    return decay


def build(config: ml_collections.ConfigDict, mesh: Mesh, image_shape: tuple[int, int, int],
          pos_weight: np.ndarray | None = None) -> Steps:
    """The model, optimizer and steps of ``config``, jitted over ``mesh``.

    The jitted steps are shared by every ``build`` in the process with the same
    program inputs (the model, loss, optimizer, augmentation, EMA, TTA, input
    shape and mesh): a run evaluated after training, or the next run of a
    sweep, traces and compiles nothing again.
    """
    key = _program_key(config, mesh, image_shape, pos_weight)
    if key not in _PROGRAMS:
        if len(_PROGRAMS) == _MAX_PROGRAMS:
            del _PROGRAMS[next(iter(_PROGRAMS))]  # the oldest
        _PROGRAMS[key] = _programs(config, mesh, image_shape, pos_weight)
    return Steps(config, image_shape, mesh, *_PROGRAMS[key])


_PROGRAMS: dict[str, tuple] = {}  # _program_key -> what _programs returns, oldest first
_MAX_PROGRAMS = 8  # each holds its compiled executables


def _program_key(config: ml_collections.ConfigDict, mesh: Mesh,
                 image_shape: tuple[int, int, int], pos_weight: np.ndarray | None) -> str:
    """Everything ``_programs`` reads, as text."""
    norm = input_normalization(config)
    return json.dumps([config.model.to_dict(), config.loss, config.focal_gamma,
                       None if pos_weight is None else np.asarray(pos_weight).tolist(),
                       config.optimizer.to_dict(), _schedule_span(config),
                       config.augment.to_dict(),
                       ema_decay(config), config.get("tta", 1), config.get("tta_reduce", "mean"),
                       None if norm is None else [n.tolist() for n in norm], list(image_shape),
                       [d.id for d in mesh.devices.flat], list(mesh.axis_names)],
                      sort_keys=True, default=str)


def _schedule_span(config: ml_collections.ConfigDict) -> int | None:
    """``config.total_steps`` where the LR schedule spans it, else None: runs of other
    lengths share their programs."""
    spans = config.optimizer.get("schedule", "plateau") in ("cosine", "onecycle")
    return config.total_steps if spans and not config.optimizer.lr_decay_steps else None


def _model_depths(config: ml_collections.ConfigDict, model: Any,
                  image_shape: tuple[int, int, int]) -> dict[str, int] | None:
    """``layer_depths`` of the backbone's top-level layers, where ``config.optimizer.
    layer_decay`` needs them (None for the seed CNN, which has no layer order)."""
    if not config.optimizer.get("layer_decay") or config.model.name not in config_lib.BACKBONES:
        return None
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    return layer_depths(shapes["params"], models.module(config.model.name).layer_key)


def _programs(config: ml_collections.ConfigDict, mesh: Mesh, image_shape: tuple[int, int, int],
              pos_weight: np.ndarray | None) -> tuple:
    """``Steps``'s fields after ``config``, ``image_shape`` and ``mesh``."""
    model = models.create(config.model)
    loss_fn = losses.make_loss(config.loss, config.focal_gamma, pos_weight)
    tx = make_optimizer(config.optimizer, config.total_steps,
                        _model_depths(config, model, image_shape))
    plateau = optax.contrib.reduce_on_plateau(factor=config.optimizer.plateau_factor,
                                              patience=config.optimizer.plateau_patience)
    rep = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))
    size, norm = image_shape[0], input_normalization(config)
    train = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn,
                                      aug_cfg=config.augment, size=size, norm=norm,
                                      ema_decay=ema_decay(config)),
                    in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                    donate_argnums=(0, 2))
    options = infer_options(config, image_shape)
    evaluate = jax.jit(functools.partial(eval_step, model=model, loss_fn=loss_fn, **options),
                       in_shardings=(rep, data),
                       out_shardings={"loss_sum": rep, "count": rep, "probs": data})
    # Momentum 0: a BatchNorm's "running" statistics come back as the batch's own moments.
    # A model without BatchNorm has no bn_momentum, and no moments to compute.
    batch_moments = model.clone(bn_momentum=0.0) if hasattr(model, "bn_momentum") else model
    moments = jax.jit(functools.partial(moments_step, model=batch_moments,
                                        size=size, norm=norm, crop=options["crop"]),
                      in_shardings=(rep, data), out_shardings=rep)
    # One jitted program, compiled at LLVM's optimization level 1 unless XLA_FLAGS names
    # one: the random initializers' code takes XLA:CPU seconds per layer to optimize
    # fully, for a program that runs once per run (the same values; BENCHMARKS.md,
    # "Test suite").
    fresh = jax.jit(functools.partial(_fresh_state, model=model, tx=tx, plateau=plateau,
                                      image_shape=image_shape, ema=bool(ema_decay(config))),
                    out_shardings=rep, compiler_options=xla_defaults.one_off_compiler_options())
    return model, tx, plateau, train, evaluate, moments, fresh


def init_state(steps: Steps) -> TrainState:
    """Fresh, replicated state from ``config.seed``."""
    return steps.init(np.uint32(steps.config.seed))


def abstract_state(steps: Steps) -> TrainState:
    """``init_state``'s shapes, dtypes and shardings, computing nothing: a target to
    restore a checkpoint into without compiling the initializers."""
    shapes = jax.eval_shape(steps.init, np.uint32(steps.config.seed))
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=steps.replicated),
        shapes)


def _fresh_state(seed: jax.Array, *, model, tx, plateau, image_shape: tuple[int, int, int],
                 ema: bool) -> TrainState:
    """The state before the first step: the model's initializers, fresh optimizer and LR
    plateau states, the augmentation key; ``ema``: averages starting at the weights."""
    init_key, aug_key = jax.random.split(jax.random.PRNGKey(seed))
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init(init_key, dummy, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), plateau=plateau.init(params), rng=aug_key,
                      ema={"params": params, "batch_stats": batch_stats} if ema else None)


def zero_sums(steps: Steps) -> dict:
    """Empty on-device training sums for ``train_step``: loss and step counts.

    ``nonfinite`` counts steps whose loss or gradient was NaN/Inf (their
    update skipped), ``first_nonfinite`` is the first such step (0: none).
    """
    zeros = {"loss": jnp.float32(0), "steps": jnp.int32(0), "nonfinite": jnp.int32(0),
             "first_nonfinite": jnp.int32(0)}
    return jax.device_put(jax.device_get(zeros), steps.replicated)


def update_plateau(steps: Steps, state: TrainState, val_loss: float) -> TrainState:
    """Feeds a validation loss to the LR plateau rule (x factor after patience evals), under
    the "plateau" schedule only (the others keep its scale at 1)."""
    if steps.config.optimizer.get("schedule", "plateau") != "plateau":
        return state
    _, plateau = steps.plateau.update({}, state.plateau, value=jnp.float32(val_loss))
    return state.replace(plateau=jax.device_put(plateau, steps.replicated))


def to_device(steps: Steps, batch: dict) -> dict:
    """This process's slice of a global batch, as arrays sharded on ``data``."""
    return {k: jax.make_array_from_process_local_data(steps.batch_sharding, v)
            for k, v in batch.items() if k not in HOST_KEYS}
