"""SE-ResNeXt50 (32x4d, timm's) fine-tuned on four channels: the Kaggle 2019 second and
third places'.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/seresnext50.py \
      --workdir=runs/seresnext50 --config.model.init_from=seresnext50_32x4d.safetensors \
      [--config.data.store=STORE]

``init_from`` reads timm's ``seresnext50_32x4d`` keys or the Cadene version's
(timm's ``legacy_seresnext50_32x4d``) that the 2019 teams used; ImageNet input
statistics go with either. The third place trained it on 1024 px crops of 2048 px
HPAv18 images: set ``data.store`` to a store converted at 2048 px and
``data.input_size=1024``. The rest is ``hpajax.config.base_config()``, plain data.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set converted at 512 px
    config.data.input_size = 512  # the second place's input size
    config.model = model_config("seresnext50_32x4d")
    config.model.dtype = "bfloat16"  # GPU/TPU speed; float32 on a CPU
    config.model.remat = True  # 512 px activations of 16 blocks: recompute, fit the batch
    config.optimizer.learning_rate = 3e-4  # Adam at 3e-4, as the 2019 winners
    config.optimizer.decay = "kernels"  # no weight decay on BatchNorm and biases
    config.optimizer.head_warmup_steps = 680  # the new head alone for an epoch
    config.optimizer.schedule = "step"  # the second place's step decay ...
    config.optimizer.lr_boundaries = (15 * 680, 22 * 680)  # ... after epochs 15 and 22 ...
    config.optimizer.lr_factors = (0.1, 0.1)  # ... by ten each time
    config.loss = "focal"  # focal loss, gamma 2 (config.focal_gamma)
    config.data.oversample = 0.5  # rare classes drawn more often, as the 2019 teams did
    config.batch_size = 32
    # One evaluation per epoch of the 70 % training part of the 31,072 Kaggle samples.
    config.eval_every = config.checkpoint_every = 680
    config.total_steps = 25 * 680
    return config
