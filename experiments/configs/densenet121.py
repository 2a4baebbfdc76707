"""DenseNet-121 (torchvision's) from scratch on four channels at 512 px: the Kaggle 2019 winner's.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/densenet121.py \
      --workdir=runs/densenet121 [--config.data.store=STORE]

The rest is ``hpajax.config.base_config()``, plain data: the seed's
augmentation, Adam with the LR x0.1 after 3 evaluations without a better
validation loss, exact BatchNorm statistics before each evaluation.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set converted at 512 px
    config.data.input_size = 512  # the winner's input size
    config.model = model_config("densenet121")  # growth 32, blocks 6/12/24/16
    config.model.dtype = "bfloat16"  # GPU/TPU speed; float32 on a CPU
    config.model.remat = True  # the dense blocks' concatenations are large at 512 px
    config.optimizer.learning_rate = 3e-4  # Adam at 3e-4, as the winner
    config.optimizer.decay = "kernels"  # no weight decay on BatchNorm and biases
    # With --config.model.init_from=WEIGHTS: e.g. 680 trains the new head alone for an epoch.
    config.optimizer.head_warmup_steps = 0
    config.loss = "focal"  # the winner's loss had a focal term (gamma 2)
    config.batch_size = 32
    # One evaluation per epoch of the 70 % training part of the 31,072 Kaggle samples.
    config.eval_every = config.checkpoint_every = 680
    config.total_steps = 30 * 680
    return config
