"""ResNet-34 (torchvision's) from scratch on four channels at 512 px: the Kaggle 2019 third place's.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/resnet34.py \
      --workdir=runs/resnet34 [--config.data.store=STORE --config.model.name=resnet18]

The rest is ``hpajax.config.base_config()``, plain data: the seed's
augmentation, Adam with the LR x0.1 after 3 evaluations without a better
validation loss, exact BatchNorm statistics before each evaluation. Any of
``hpajax.config.BACKBONES`` runs with ``--config.model.name``; their model
blocks have the same fields.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set converted at 512 px
    config.data.input_size = 512  # the winners' input size
    config.model = model_config("resnet34")  # 3, 4, 6, 3 basic blocks, BatchNorm 0.9 / 1e-5
    config.model.dtype = "bfloat16"  # GPU/TPU speed; float32 on a CPU
    config.optimizer.learning_rate = 3e-4  # Adam at 3e-4, as the top Kaggle teams
    config.optimizer.decay = "kernels"  # no weight decay on BatchNorm and biases
    # With --config.model.init_from=WEIGHTS: e.g. 680 trains the new head alone for an epoch.
    config.optimizer.head_warmup_steps = 0
    config.loss = "focal"  # the winners' focal loss (gamma 2), for the rare classes
    config.batch_size = 32
    # One evaluation per epoch of the 70 % training part of the 31,072 Kaggle samples.
    config.eval_every = config.checkpoint_every = 680
    config.total_steps = 30 * 680
    return config
