"""The seed recipe and the Kaggle HPA 2019 winners' ingredients, one at a time: runs of
``experiments/recipes.py``.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/recipes.py:NAME \
      --workdir=runs/recipes/NAME --config.data.store=KAGGLE_STORE

NAME is one of ``RECIPES``: ``seed`` (the seed CNN, BCE, thresholds tuned on
val), one ingredient added to it (``external``: the Kaggle store's train part
mixed 1:1 per sample with every image of an external store; ``oversample``:
rare-class oversampling; ``crop``: random crops of the stored image instead
of the whole image resized; ``focal``; ``focal_lovasz``; ``ema``; ``cosine``:
a 30-step linear warm-up, then a cosine decay to 0, instead of the plateau
rule; ``tta``: the seed recipe's runs evaluated with ``--tta=8``), ``all`` of
them but ``cosine`` (focal +
Lovász, evaluated with ``--tta=8``; validation during training stays at one
view per crop, as TTA only changes what is reported), or ``all_bce``: all
but the loss. Every recipe feeds the model 96 px inputs from a 128 px store,
so the crop recipe costs what the others do.
"""

import ml_collections

from hpajax.config import base_config

INGREDIENTS = ("external", "oversample", "crop", "focal", "focal_lovasz", "ema", "cosine",
               "tta")
RECIPES = ("seed", *INGREDIENTS, "all", "all_bce")
EVALUATION_TTA = {"tta": 8, "all": 8, "all_bce": 8}  # evaluate --tta of the recipes using it
KAGGLE = "runs/recipes/data/kaggle/store"  # recipes.py makes both synthetic stores
EXTERNAL = "runs/recipes/data/external/store"


def get_config(name: str = "seed") -> ml_collections.ConfigDict:
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r}: choose one of {', '.join(RECIPES)}")
    c = base_config()  # the seed CNN (full width) at a CPU batch of 16
    c.batch_size = 16
    c.log_every = 25
    c.bn_recalibration_batches = 10
    c.data.store = KAGGLE
    c.data.input_size = 96
    c.total_steps = 300
    c.eval_every = c.checkpoint_every = 100
    every = set(INGREDIENTS) - {"focal", "cosine"}  # focal_lovasz holds focal
    add = {"all": every, "all_bce": every - {"focal_lovasz"}}.get(name, {name})
    if "external" in add:
        c.data.sources = (f"{KAGGLE}:train:1", f"{EXTERNAL}:all:1")
    if "oversample" in add:
        c.data.oversample = 0.5
    if "crop" in add:
        c.augment.crop = True
    if "focal" in add:
        c.loss = "focal"
    if "focal_lovasz" in add:
        c.loss = "focal+lovasz"
    if "ema" in add:
        c.ema_decay = 0.99  # an average over ~100 of the 300 steps
    if "cosine" in add:
        c.optimizer.schedule = "cosine"  # over total_steps, down to 0
        c.optimizer.lr_warmup_steps = 30  # a tenth of the run
    return c
