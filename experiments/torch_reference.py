"""PyTorch reference of hpajax's seed CNN and training step, for benchmarks only.

The same network as ``hpajax.models.seed_cnn.SeedCNN``: four blocks of two
``Conv k×k (VALID, no bias) -> BatchNorm -> ReLU`` and a 2×2 max-pool, the
global average of every block's pooled output concatenated (480 values),
then ``Linear 512 -> BN -> ReLU -> Linear 256 -> BN -> ReLU -> Linear 28``.
BatchNorm is Keras' (momentum 0.99, i.e. torch ``momentum=0.01``; epsilon
1e-3; torch's running variance is the unbiased batch variance, Flax's the
biased one, which changes nothing in the timing), the optimizer
``optax.adamw``'s twin ``torch.optim.AdamW`` with the seed's Table 4
settings, the loss ``BCEWithLogitsLoss``.

Steps take uint8 NHWC batches, as hpajax's do, and convert them to float in
[0, 1] inside the step. A permuted NHWC tensor is already in torch's
``channels_last`` layout, which on the 2-core CPU (torch 2.13, 2 threads,
4 channels, batch 8, otherwise idle machine) is the faster one: train /
eval 72 / 306 img/s against 48 / 196 for contiguous NCHW at 128 px, and
12.1 / 40.5 against 10.6 / 34.4 at 256 px; so it is the default. There is
no augmentation here, which makes comparisons with hpajax's augmenting train
step conservative for JAX.

``load_flax_variables`` copies a Flax model's variables in, so the two
implementations can be checked to compute the same function.
``reference_backbone`` gives the backbones' torchvision and timm twins (they
import only in their own venv beside torch 2.14.1, see the README).

torch is not an hpajax dependency: install it for benchmarks only (e.g.
``pip install torch==2.13.0``, a CPU wheel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

BN_MOMENTUM = 0.01  # torch convention: Keras' 0.99
BN_EPSILON = 1e-3


class SeedCNN(nn.Module):
    """The seed CNN on NCHW (or channels_last) float input; returns logits."""

    def __init__(self, in_channels: int, num_classes: int = 28,
                 filters: Sequence[int] = (32, 64, 128, 256), kernel_size: int = 3,
                 head: Sequence[int] = (512, 256)):
        super().__init__()
        self.blocks = nn.ModuleList()
        previous = in_channels
        for features in filters:
            layers = []
            for conv_in in (previous, features):
                layers += [nn.Conv2d(conv_in, features, kernel_size, bias=False),
                           nn.BatchNorm2d(features, eps=BN_EPSILON, momentum=BN_MOMENTUM),
                           nn.ReLU(inplace=True)]
            self.blocks.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
            previous = features
        layers, width_in = [], sum(filters)
        for width in head:
            layers += [nn.Linear(width_in, width, bias=False),
                       nn.BatchNorm1d(width, eps=BN_EPSILON, momentum=BN_MOMENTUM),
                       nn.ReLU(inplace=True)]
            width_in = width
        self.head = nn.Sequential(*layers, nn.Linear(width_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for block in self.blocks:
            x = block(x)
            pooled.append(x.mean(dim=(2, 3)))
        return self.head(torch.cat(pooled, dim=1))


def reference_backbone(name: str, channels: int, num_classes: int, size: int = 224
                       ) -> nn.Module:
    """The reference of hpajax's backbone ``name`` (torchvision's or timm's, as
    ``torchvision_reference.MODELS``; Inception-v3 without its auxiliary head, as
    hpajax; a ViT built for ``size`` px) with a ``channels``-input stem and
    ``num_classes`` outputs, as ``hpajax.models`` builds it."""
    from torchvision_reference import MODELS  # noqa: PLC0415  (a sibling, needs no torch)

    library, constructor, kwargs = MODELS[name]
    if library == "timm":
        import timm  # noqa: PLC0415  (only the timm backbones need it)

        sized = {"img_size": size} if name.startswith("vit_") else {}
        model = timm.create_model(constructor, num_classes=num_classes, **kwargs, **sized)
    else:
        import torchvision  # noqa: PLC0415  (only the backbones need it)

        kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else kwargs
        model = getattr(torchvision.models, constructor)(num_classes=num_classes, **kwargs)
    parent, key, stem = next((parent, key, child) for parent in model.modules()
                             for key, child in parent.named_children()
                             if isinstance(child, nn.Conv2d) and child.in_channels == 3)
    setattr(parent, key, nn.Conv2d(channels, stem.out_channels, stem.kernel_size, stem.stride,
                                   stem.padding, bias=stem.bias is not None))
    return model


def make_optimizer(model: nn.Module, learning_rate: float = 1e-3,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7,
                   weight_decay: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW on every parameter, as ``optax.adamw`` with hpajax's base config."""
    return torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, eps=eps,
                             weight_decay=weight_decay)


def param_count(model: nn.Module) -> int:
    """Number of trainable values (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def to_input(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW in [0, 1], in the chosen memory layout."""
    x = images.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """One optimizer step on uint8 NHWC images and multi-hot labels; returns the loss."""
    model.train()
    logits = model(to_input(images, channels_last))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def eval_step(model: nn.Module, images: torch.Tensor,
              channels_last: bool = True) -> torch.Tensor:
    """Probabilities of uint8 NHWC images with running BatchNorm statistics."""
    model.eval()
    with torch.inference_mode():
        return torch.sigmoid(model(to_input(images, channels_last)))


def _copy(target: torch.Tensor, value: Any, transpose: Sequence[int] | None = None) -> None:
    """Overwrites ``target`` with an array, axes permuted first if asked; shapes must match."""
    array = np.array(value, np.float32)
    if transpose is not None:
        array = array.transpose(transpose)
    if array.shape != tuple(target.shape):
        raise ValueError(f"shape {array.shape} does not fit {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(array)))


def _copy_bn(bn: nn.Module, params: Mapping, stats: Mapping) -> None:
    """Copies a Flax BatchNorm's scale, bias and running statistics into ``bn``."""
    _copy(bn.weight, params["scale"])
    _copy(bn.bias, params["bias"])
    _copy(bn.running_mean, stats["mean"])
    _copy(bn.running_var, stats["var"])


def load_flax_variables(model: SeedCNN, variables: Mapping[str, Any]) -> None:
    """Copies ``hpajax.models.seed_cnn.SeedCNN`` variables (``params``, ``batch_stats``) in.

    Conv kernels go HWIO -> OIHW and dense kernels [in, out] -> [out, in].
    """
    params, stats = variables["params"], variables["batch_stats"]
    for b, block in enumerate(model.blocks, start=1):
        convs = [m for m in block if isinstance(m, nn.Conv2d)]
        bns = [m for m in block if isinstance(m, nn.BatchNorm2d)]
        for c, (conv, bn) in enumerate(zip(convs, bns), start=1):
            _copy(conv.weight, params[f"block{b}_conv{c}"]["kernel"], (3, 2, 0, 1))
            _copy_bn(bn, params[f"block{b}_bn{c}"], stats[f"block{b}_bn{c}"])
    dense = [m for m in model.head if isinstance(m, nn.Linear)]
    bns = [m for m in model.head if isinstance(m, nn.BatchNorm1d)]
    for d, (linear, bn) in enumerate(zip(dense, bns), start=1):
        _copy(linear.weight, params[f"dense{d}"]["kernel"], (1, 0))
        _copy_bn(bn, params[f"bn_dense{d}"], stats[f"bn_dense{d}"])
    _copy(dense[-1].weight, params["logits"]["kernel"], (1, 0))
    _copy(dense[-1].bias, params["logits"]["bias"])


def main(model_name: str, size: int, batches: Sequence[int], repeats: int) -> None:
    """Prints one JSON line per batch size: eval-mode images/s of ``model_name`` (the seed
    CNN or a torchvision backbone, random weights) on uint8 images at ``size`` px, the
    median of ``repeats`` calls after a warm-up (experiments/bench_predict.py)."""
    import json  # noqa: PLC0415
    import statistics  # noqa: PLC0415
    import time  # noqa: PLC0415

    model = (SeedCNN(4) if model_name == "seed_cnn"
             else reference_backbone(model_name, 4, 28, size)).to(memory_format=torch.channels_last)
    for batch in batches:
        images = torch.randint(0, 256, (batch, size, size, 4), dtype=torch.uint8)
        eval_step(model, images)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            eval_step(model, images)
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"batch": batch, "img_per_s": round(batch / statistics.median(seconds),
                                                                2),
                          "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    import sys  # noqa: PLC0415

    main(sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")],
         int(sys.argv[4]))
