"""EfficientNet-B4 (torchvision's) fine-tuned on four channels: the HPA 2021 winners' CNN.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/efficientnet_b4.py \
      --workdir=runs/efficientnet_b4 --config.model.init_from=efficientnet_b4.safetensors \
      [--config.data.store=STORE]

ImageNet input statistics go with the weights (chosen from ``init_from``).
The rest is ``hpajax.config.base_config()``, plain data.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set converted at 512 px
    config.data.input_size = 384  # B4's native resolution (torchvision evaluates at 384)
    config.model = model_config("efficientnet_b4")  # stochastic depth 0.2, torchvision's
    config.model.dtype = "bfloat16"  # GPU/TPU speed; float32 on a CPU
    config.model.remat = True  # the expanded depthwise activations are large
    config.model.dropout = 0.4  # torchvision's B4 classifier dropout
    config.optimizer.learning_rate = 5e-4  # Adam, as the 2021 solutions
    config.optimizer.decay = "kernels"  # no weight decay on BatchNorm and biases
    config.optimizer.weight_decay = 1e-5  # decoupled (AdamW), light
    config.optimizer.schedule = "cosine"  # warm-up then cosine to a floor
    config.optimizer.lr_warmup_steps = 680  # one epoch of linear warm-up
    config.optimizer.lr_floor = 0.01  # the last LR, 1 % of the peak
    config.loss = "bce"  # the 2021 solutions trained with BCE
    config.ema_decay = 0.999  # evaluate an average of the weights, common with EfficientNets
    config.batch_size = 32
    # One evaluation per epoch of the 70 % training part of the 31,072 Kaggle samples.
    config.eval_every = config.checkpoint_every = 680
    config.total_steps = 20 * 680
    return config
