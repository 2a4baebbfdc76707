"""The training configs' shared blocks, as plain data (imports only ml_collections).

``experiments/configs/*.py`` start from ``base_config()`` (the seed paper's
runs from ``paper_config()``), and the built-in demo trains with
``demo_config()``. Each field is documented where it is set; the command line
overrides any (``--config.batch_size=8``). Saved ``config.json`` files and
resume checks rely on these names and defaults.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Our defaults: the seed's model and optimizer on all four channels."""
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.data.store = "runs/demo/store"  # converted store (tools/convert.py)
    c.data.split = "default"  # split saved with the store (tools/split.py)
    c.data.train_part, c.data.eval_part, c.data.test_part = "train", "val", "test"
    # k >= 0 on a split of folds (tools/split.py --folds=K): train on the other folds,
    # validate on fold k, test on the split's "test" part; the three parts above unused.
    c.data.fold = -1
    c.data.channels = (0, 1, 2, 3)  # red, green, blue, yellow; the seed used (0, 1, 2)
    c.data.input_size = 0  # model input side in px; 0: the store's (resized on device)
    c.data.image_size = 0  # set by train: the store's side, at which predict converts PNGs
    c.data.num_workers = 0  # Grain worker processes (0: in-process threads, see BENCHMARKS.md)
    # Training sources, each "LOCATION:PART:WEIGHT" (PART "all": every row), drawn per sample
    # in proportion to WEIGHT; () trains on data.store's train_part. Evaluation stays on
    # data.store's split. Stores of one run must share their image size.
    c.data.sources = ()
    c.data.exclude = ""  # CSV of Ids left out of training (tools/dedupe.py writes one)
    c.data.oversample = 0.0  # alpha: draw a sample by max over its classes of (1/freq)^alpha

    c.batch_size = 32  # global batch, split over all devices
    c.eval_batch_size = 64
    c.total_steps = 10_000
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.keep_checkpoints = 3  # the last K, plus the best by best_metric
    c.best_metric, c.best_mode = "macro_f1", "max"
    c.seed = 0
    c.bn_recalibration_batches = 20  # exact BatchNorm statistics before each evaluation
    c.ema_decay = 0.0  # > 0: evaluate an exponential moving average of the weights
    c.tta = 1  # validation: mean over 1, 2, 4 or 8 dihedral views (evaluate/predict: --tta)
    c.tta_reduce = "mean"  # or "max": how views (and crops) are reduced
    c.skip_nonfinite = False  # NaN/Inf loss or gradient: stop (False) or skip the step

    c.model = model_config("seed_cnn")

    c.optimizer = ml_collections.ConfigDict()  # the seed's Table 4
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.optimizer.eps = 1e-7  # Keras' Adam epsilon
    c.optimizer.weight_decay = 1e-8
    c.optimizer.decay = "all"  # what weight decay applies to: "all" or "kernels"
    c.optimizer.head_warmup_steps = 0  # first steps in which the backbone's LR is scaled ...
    c.optimizer.head_warmup_scale = 0.0  # ... by this (0: frozen), so a new head settles first
    # Layer-wise LR decay for fine-tuning a backbone: a layer at depth d (0: the stem) of D
    # (the head) learns at decay^(D - d) x the LR; 0: off. ViTs fine-tune with 0.65-0.75.
    c.optimizer.layer_decay = 0.0
    # The LR schedule: "plateau" (the seed's rule below), "cosine" (linear warm-up from 0,
    # then cosine to lr_floor x learning_rate), "step" (x each lr_factors entry after the
    # matching lr_boundaries step) or "onecycle" (up then down, torch's OneCycleLR).
    c.optimizer.schedule = "plateau"
    c.optimizer.plateau_factor = 0.1  # "plateau": LR x0.1 ...
    c.optimizer.plateau_patience = 3  # ... after 3 evaluations without val-loss improvement
    c.optimizer.lr_warmup_steps = 0  # "cosine": the warm-up (not head_warmup_steps)
    c.optimizer.lr_decay_steps = 0  # "cosine", "onecycle": steps spanned (0: total_steps)
    c.optimizer.lr_floor = 0.0  # "cosine": the last LR, a fraction of learning_rate
    c.optimizer.lr_boundaries = ()  # "step": after these steps ...
    c.optimizer.lr_factors = ()  # ... the LR is multiplied by these factors
    c.optimizer.onecycle_pct_start = 0.3  # "onecycle": the rising share of the steps

    c.loss = "bce"  # "bce", "focal", "lovasz" or a weighted sum such as "focal+0.5*lovasz"
    c.focal_gamma = 2.0
    c.pos_weight = False  # weight positives by the training split's negative/positive ratio

    # On-device augmentation (hpajax/augment.py): the seed paper's, every op on.
    c.augment = ml_collections.ConfigDict()
    c.augment.rotate = True
    c.augment.max_angle = 270.0  # degrees; angle ~ U[-max_angle, max_angle]
    c.augment.zoom = True
    c.augment.zoom_range = (0.8, 1.2)  # z ~ U[lo, hi]; z > 1 magnifies
    c.augment.brightness = True
    c.augment.brightness_range = (0.5, 1.5)  # factor ~ U[lo, hi]
    c.augment.brightness_shift = 0.0  # offset ~ U[-s, s], in [0, 1] units
    c.augment.hflip = True
    c.augment.vflip = True
    # Random input_size crops of a larger stored image (else the whole image, resized);
    # evaluation then reduces over a fixed grid of crops covering the image.
    c.augment.crop = False
    return c


# The one list of the ImageNet backbones hpajax builds: config.model.name -> (the module
# of hpajax/models that builds it, the input normalization its reference weights expect).
BACKBONES = {
    "resnet18": ("resnet", "imagenet"),
    "resnet34": ("resnet", "imagenet"),
    "resnet50": ("resnet", "imagenet"),
    "densenet121": ("densenet", "imagenet"),
    "densenet169": ("densenet", "imagenet"),
    "inception_v3": ("inception", "inception"),
    "seresnext50_32x4d": ("seresnext", "imagenet"),
    "xception": ("xception", "inception"),
    "efficientnet_b0": ("efficientnet", "imagenet"),
    "efficientnet_b4": ("efficientnet", "imagenet"),
    "convnext_tiny": ("convnext", "imagenet"),
    "vit_small_patch16": ("vit", "inception"),
    "vit_base_patch16": ("vit", "inception"),
}
# The backbones with stochastic depth, at their reference's rate (config.model.drop_path).
DROP_PATH = {"efficientnet_b0": 0.2, "efficientnet_b4": 0.2, "convnext_tiny": 0.1,
             "vit_small_patch16": 0.0, "vit_base_patch16": 0.0}
MODELS = ("seed_cnn", *BACKBONES)  # the values of config.model.name
NORMALIZATIONS = ("unit", "imagenet", "inception")  # the values of config.model.normalize
# The seed CNN's first two blocks at a quarter of its width: tiny.py's model, and the
# toy model of the experiments' smoke runs, which check code paths, not scores.
TINY_SEED_CNN = {"filters": (8, 16), "head": (32, 16)}


def model_config(name: str) -> ml_collections.ConfigDict:
    """The ``model`` block for the model ``name``: its fields at their defaults."""
    c = ml_collections.ConfigDict()
    c.name = name  # "seed_cnn" (the seed paper's CNN) or one of BACKBONES
    c.dtype = "float32"  # or "bfloat16" (params and BN statistics stay float32)
    if name == "seed_cnn":
        c.kernel_size = 3
        c.filters = (32, 64, 128, 256)
        c.head = (512, 256)
    elif name in BACKBONES:
        c.dropout = 0.0  # dropout rate before the 28-logit layer
        c.remat = False  # recompute each block in the backward pass: less memory at 512 px
        c.init_from = ""  # a torchvision/timm .safetensors file to start from ("": scratch)
        # inputs: "unit" (÷255), "imagenet" (torchvision's mean/std) or "inception" (mean =
        # std = 0.5); "": with init_from, the weights' (BACKBONES), else "unit"
        c.normalize = ""
        c.yellow_init = "mean_red_green"  # yellow stem filters from RGB: or "mean_rgb", "zeros"
        if name in DROP_PATH:
            c.drop_path = DROP_PATH[name]  # stochastic depth rate, growing over the blocks
        if BACKBONES[name][0] == "vit":
            c.pool = "token"  # the head reads the class token ("token") or the patches' mean
    else:
        raise ValueError(f"config.model.name={name!r}: choose 'seed_cnn' or one of "
                         f"{', '.join(BACKBONES)}")
    return c


def model_block_for(model: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The model block of ``name`` in place of ``model``: the fields the two share keep
    ``model``'s values (``dtype``), the others are ``name``'s defaults.

    What ``--config.model.name=NAME`` gives a config file of another model, so that
    NAME's own fields (a backbone's ``init_from``) can be set in the same command.
    """
    block = model_config(name)
    for field in block:
        if field != "name" and field in model:
            block[field] = model[field]
    return block


def missing_field(config: ml_collections.ConfigDict, path: str) -> str:
    """Why ``config`` has no field ``path`` (e.g. ``"model.init_from"``); "" if it has one.

    For a field of another model's block, says which models have it.
    """
    tree, parts = config, path.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(tree, ml_collections.ConfigDict):
            return ""  # a part of a value: ml_collections judges it
        if part not in tree:
            return _why_missing(tree, ".".join(parts[:depth]), part)
        tree = tree[part]
    return ""


def _why_missing(tree: ml_collections.ConfigDict, where: str, field: str) -> str:
    if where != "model":
        block = f"config.{where}" if where else "the config"
        return f"{block} has no field {field!r} (its fields: {', '.join(sorted(tree))})"
    having = [name for name in MODELS if field in model_config(name)]
    if not having:
        return (f"no model block has a field {field!r} (the {tree.name} block's: "
                f"{', '.join(sorted(tree))})")
    return (f"not a field of the {tree.name} model block, but of {', '.join(having)}'s: "
            f"add --config.model.name={having[0]}")


def paper_config() -> ml_collections.ConfigDict:
    """The seed paper's setup: 512 px, kernel 3, batch 32, RGB (3 channels)."""
    c = base_config()
    c.data.store = "runs/hpa512/store"
    c.data.channels = (0, 1, 2)
    c.batch_size = 32
    c.model.kernel_size = 3
    # One evaluation per epoch of the 80 % training share of 31,072 samples.
    c.eval_every = c.checkpoint_every = 777
    c.total_steps = 50 * 777
    return c


def demo_config() -> ml_collections.ConfigDict:
    """The built-in demo's run (``hpajax.main demo``): a few minutes on a 2-core CPU.

    The seed CNN at half its width on the demo's 96 px images: on a 2-core CPU
    it takes twice the steps of the full model at 128 px in a third of the
    time, and learns more (BENCHMARKS.md, "The demo"). The demo sets
    ``data.store`` to the synthetic store it makes.
    """
    c = base_config()
    c.batch_size = 16  # half the base batch, for the CPU
    c.total_steps = 1200  # the demo's --train_steps overrides it
    c.log_every = 50
    c.eval_every = c.checkpoint_every = 200
    c.bn_recalibration_batches = 10
    c.model.filters = (16, 32, 64, 128)
    c.model.head = (256, 128)
    return c
