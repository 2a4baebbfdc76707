"""Inception-v3 (torchvision's) fine-tuned on four channels: the Kaggle 2019 third place's.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/inception_v3.py \
      --workdir=runs/inception_v3 --config.model.init_from=inception_v3.safetensors \
      [--config.data.store=STORE]

The third place trained Inception-v3 on random 1024 px crops of 2048 px
HPAv18 images: ``data.input_size`` is the crop's side, so those crops need a
store converted at a larger size (``tools/convert.py --size=2048``, then
``--config.data.store``); on the 512 px Kaggle store below, the crops are
448 px. The weights' input statistics (mean = std = 0.5, torchvision's
``transform_input``) are chosen from ``init_from``. The rest is
``hpajax.config.base_config()``, plain data.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set at 512 px; 2048 px for 1024 crops
    config.data.input_size = 448  # the crop side: 1024 on a 2048 px store, as the third place
    config.augment.crop = True  # random crops in training, a grid of crops at evaluation
    config.model = model_config("inception_v3")  # no auxiliary head
    config.model.dtype = "bfloat16"  # GPU/TPU speed; float32 on a CPU
    config.model.dropout = 0.5  # torchvision's dropout before the classifier
    config.optimizer.learning_rate = 1e-4  # fine-tuning: ten times below the seed's
    config.optimizer.decay = "kernels"  # no weight decay on BatchNorm and biases
    config.optimizer.head_warmup_steps = 680  # the new head alone for an epoch ...
    config.optimizer.head_warmup_scale = 0.0  # ... with the pretrained layers frozen
    config.optimizer.schedule = "cosine"  # warm-up then cosine, over total_steps
    config.optimizer.lr_warmup_steps = 680  # one epoch of linear warm-up
    config.loss = "focal+0.5*lovasz"  # the HPA winners' mix of focal and Lovász terms
    config.batch_size = 32
    # One evaluation per epoch of the 70 % training part of the 31,072 Kaggle samples.
    config.eval_every = config.checkpoint_every = 680
    config.total_steps = 25 * 680
    return config
