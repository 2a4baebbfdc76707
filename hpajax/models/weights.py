"""Pretrained weights from a torchvision- or timm-named safetensors file into a backbone.

The backbones' layer names follow their reference's state-dict keys, so a
key maps onto a variable by rule: first the backbone's own renames
(``ImportRules``, in its module: ``layerI.J`` is ResNet's ``layerI_J``),
then every dot is one level of nesting. A conv ``weight`` [O, I, kh, kw]
becomes ``kernel`` [kh, kw, I, O], a linear ``weight`` [out, in] ``kernel``
[in, out], a BatchNorm's or LayerNorm's ``weight`` and ``bias`` ``scale`` and
``bias``, ``running_mean`` and ``running_var`` the ``batch_stats`` ``mean``
and ``var``; any other tensor (``cls_token``, ``pos_embed``,
``layer_scale``) the parameter of its name, shaped by the backbone's rule
where the shapes differ (a ViT's position grid is resized);
``num_batches_tracked`` has no counterpart. The classifier is new (28
logits): the file's is skipped, as is what the backbone lacks by design
(Inception-v3's auxiliary head).

Input channels: an RGB stem grows to red, green, blue, yellow, then keeps
the configured channels. Yellow's filters follow ``config.model.yellow_init``
(``YELLOW_RULES``): by default the mean of red's and green's, as HPAv18's
yellow image is the mean of its red and green.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
from flax import traverse_util

from hpajax.models.layers import HEAD_NAMES

# A tensor kind -> the (collection, leaf) it may be; a weight is a norm's scale where
# the module has one, else a kernel. Other kinds are the parameter of their name.
_LEAVES = {"running_mean": (("batch_stats", "mean"),), "running_var": (("batch_stats", "var"),),
           "bias": (("params", "bias"),), "weight": (("params", "scale"), ("params", "kernel"))}
_RGB = 3
# config.model.yellow_init -> the yellow filters of an RGB stem kernel [kh, kw, 3, O].
YELLOW_RULES = {
    "mean_red_green": lambda k: k[:, :, :2].mean(axis=2, keepdims=True),  # yellow = (R + G) / 2
    "mean_rgb": lambda k: k.mean(axis=2, keepdims=True),  # a grey-level response
    "zeros": lambda k: np.zeros_like(k[:, :, :1]),  # RGB responses exactly as pretrained
}


# A backbone's rule for a tensor whose Flax-layout shape differs from its variable's:
# (key, value, the variable's shape) -> the value to load, or the value unchanged.
Fitter = Callable[[str, np.ndarray, tuple[int, ...]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ImportRules:
    """How a backbone's reference state-dict keys map onto its variables.

    Attributes:
      renames: (regular expression, replacement) applied in order to each key.
      skips: (regular expression, why) for keys of parts the backbone lacks by
        design, skipped and listed.
      fit: the rule for a tensor whose shape differs from its variable's.
    """

    renames: tuple[tuple[str, str], ...] = ()
    skips: tuple[tuple[str, str], ...] = ()
    fit: Fitter | None = None


@dataclasses.dataclass(frozen=True)
class Imported:
    """A backbone's variables with a file's tensors in them, and what went where."""

    params: dict
    batch_stats: dict
    loaded: list[str]  # the file's keys that were loaded
    skipped: list[tuple[str, str]]  # (file key, why)
    fitted: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> how, if fitted

    def lines(self) -> list[str]:
        """One line per tensor of the file: loaded (and how it was fitted), or skipped and
        why."""
        return ([f"loaded  {key}" + (f" ({self.fitted[key]})" if key in self.fitted else "")
                 for key in self.loaded]
                + [f"skipped {key}: {why}" for key, why in self.skipped])


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as NumPy arrays (no torch needed)."""
    from safetensors import SafetensorError  # noqa: PLC0415  (only runs that import weights)
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
        return load_file(os.fspath(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"config.model.init_from={path}: cannot read it as safetensors "
                         f"({type(e).__name__}: {e})") from None


def import_state(state: dict[str, np.ndarray], variables: dict, channels: Sequence[int],
                 rules: ImportRules, source: str = "the file", new_head: bool = True,
                 yellow_init: str = "mean_red_green") -> Imported:
    """``variables`` (``params`` and any ``batch_stats``) with the tensors of ``state``
    in them, by the backbone's ``rules``.

    With ``new_head`` the file's classifier is skipped and the backbone's
    kept (28 logits against ImageNet's 1,000). Raises ValueError naming the
    first tensor of ``state`` that fits no variable, or whose shape differs,
    and the first variable (a new head aside) that ``state`` lacks. An RGB
    stem gets yellow filters by the rule ``yellow_init`` of ``YELLOW_RULES``.
    """
    if yellow_init not in YELLOW_RULES:
        raise ValueError(f"config.model.yellow_init={yellow_init!r}: choose one of "
                         f"{', '.join(YELLOW_RULES)}")
    heads = HEAD_NAMES if new_head else ()
    params = traverse_util.flatten_dict(variables["params"])
    stats = traverse_util.flatten_dict(variables.get("batch_stats", {}))
    new = {"params": dict(params), "batch_stats": dict(stats)}
    loaded, skipped, filled, fitted = [], [], set(), {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            skipped.append((key, "a counter, no counterpart"))
            continue
        why = next((why for pattern, why in rules.skips if re.search(pattern, key)), "")
        if why:
            skipped.append((key, why))
            continue
        collection, path = _target(key, rules.renames, params, stats, source)
        if path[0] in heads:
            skipped.append((key, "the classifier is new: 28 logits"))
            continue
        expected = new[collection][path]
        value, how = _converted(key, np.asarray(value), expected.shape, (channels, yellow_init),
                                rules.fit, source)
        new[collection][path] = value
        loaded.append(key)
        if how:
            fitted[key] = how
        filled.add((collection, path))
    missing = [f"{c}/{'/'.join(p)}" for c, tree in (("params", params), ("batch_stats", stats))
               for p in tree if (c, p) not in filled and p[0] not in heads]
    if missing:
        raise ValueError(f"{source}: no tensor for {missing[0]} ({len(missing)} variables of "
                         "the backbone are missing): not a checkpoint of this backbone")
    return Imported(traverse_util.unflatten_dict(new["params"]),
                    traverse_util.unflatten_dict(new["batch_stats"]), loaded, skipped, fitted)


def _target(key: str, renames: tuple[tuple[str, str], ...], params: dict, stats: dict,
            source: str) -> tuple[str, tuple[str, ...]]:
    """Where a file's tensor goes: (collection, flattened variable path)."""
    name = key
    for pattern, replacement in renames:
        name = re.sub(pattern, replacement, name)
    *module, kind = name.split(".")
    module = tuple(module)
    candidates = _LEAVES.get(kind, (("params", kind),))
    for collection, leaf in candidates:
        if module + (leaf,) in (params if collection == "params" else stats):
            return collection, module + (leaf,)
    raise ValueError(f"{source}: tensor {key!r} fits no variable of this backbone (read as "
                     f"{'/'.join(module) or '?'} {kind}): a checkpoint of another model?")


def _converted(key: str, value: np.ndarray, shape: tuple[int, ...],
               stem: tuple[Sequence[int], str], fit: Fitter | None, source: str
               ) -> tuple[np.ndarray, str]:
    """A torch tensor in Flax layout, checked against ``shape``, and how it was fitted
    ("" if not): an RGB stem gets the ``stem`` (channels, yellow rule), any other tensor
    of another shape the backbone's ``fit``."""
    if value.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
        value = value.transpose(2, 3, 1, 0)
        if value.shape[2] == _RGB and shape[2] != _RGB:
            value = _stem_channels(value, *stem)
    elif value.ndim == 2:  # linear [out, in] -> [in, out]
        value = value.T
    how = ""
    if value.shape != tuple(shape) and fit is not None:
        how = f"{list(value.shape)} fitted to {list(shape)}"
        value = fit(key, value, tuple(shape))
    if value.shape != tuple(shape):
        raise ValueError(f"{source}: tensor {key!r} has shape {list(value.shape)} in Flax "
                         f"layout, the backbone's is {list(shape)}")
    return value.astype(np.float32), how


def _stem_channels(kernel: np.ndarray, channels: Sequence[int], yellow_init: str
                   ) -> np.ndarray:
    """An RGB kernel [kh, kw, 3, O] as red, green, blue, yellow, then the chosen channels."""
    yellow = YELLOW_RULES[yellow_init](kernel)
    return np.concatenate([kernel, yellow], axis=2)[:, :, list(channels)]

