"""ViT-B/16 (timm's) fine-tuned on four channels: the backbone of the HPA foundation models.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/vit_base.py \
      --workdir=runs/vit_base --config.model.init_from=vit_base_patch16_224.safetensors \
      [--config.data.store=STORE]

The file's 14x14 grid of position embeddings is resized to the run's
(``data.input_size / 16``, bicubic as timm's; ``init_from.txt`` says how), and
timm's input statistics (mean = std = 0.5) are chosen from ``init_from``. The
recipe is the ViT fine-tuning one (BEiT/DeiT): AdamW, warm-up + cosine,
layer-wise learning-rate decay, stochastic depth. The rest is
``hpajax.config.base_config()``, plain data.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set converted at 512 px
    config.data.input_size = 384  # a 24x24 grid of 16 px patches
    config.model = model_config("vit_base_patch16")
    config.model.dtype = "bfloat16"  # GPU/TPU speed; float32 on a CPU
    config.model.remat = True  # 577 tokens through 12 blocks: recompute, fit the batch
    config.model.drop_path = 0.1  # stochastic depth, as ViT-B fine-tuning recipes
    config.model.pool = "token"  # the class token, as the weights were trained
    config.optimizer.learning_rate = 2e-4  # AdamW peak LR for batch 32
    config.optimizer.b2 = 0.999  # Adam's default second moment
    config.optimizer.eps = 1e-8  # torch's AdamW epsilon
    config.optimizer.weight_decay = 0.05  # decoupled weight decay, as ViT recipes ...
    config.optimizer.decay = "kernels"  # ... on the kernels only, not norms and biases
    config.optimizer.layer_decay = 0.65  # block i learns at 0.65^(13 - i) x the LR
    config.optimizer.schedule = "cosine"  # linear warm-up then cosine
    config.optimizer.lr_warmup_steps = 680  # one epoch of warm-up
    config.optimizer.lr_floor = 0.01  # the last LR, 1 % of the peak
    config.loss = "bce"
    config.batch_size = 32
    # One evaluation per epoch of the 70 % training part of the 31,072 Kaggle samples.
    config.eval_every = config.checkpoint_every = 680
    config.total_steps = 20 * 680
    return config
