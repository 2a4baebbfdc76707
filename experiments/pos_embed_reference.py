#!/usr/bin/env python3
"""timm's own resizes of seeded ViT position embeddings: a test fixture.

  /tmp/tv/bin/python experiments/pos_embed_reference.py --out=tests/data/pos_embed_resample.npz

(run it in the throwaway environment of experiments/torchvision_reference.py,
with torch and timm: ``python3 -m venv /tmp/tv && /tmp/tv/bin/pip install
torch==2.14.1 timm==1.0.31 numpy absl-py``; torch is no hpajax dependency.)

For each case of ``CASES`` (source grid side n, target grid side g) it resizes
``np.random.default_rng(0).standard_normal((1, 1 + n * n, 8), dtype=np.float32)``
(a class token and an n×n grid of 8 channels, drawn once per source side) with
timm's ``resample_abs_pos_embed(posemb, new_size=(g, g), num_prefix_tokens=1)``
(bicubic, ``antialias=True``, as timm loads a checkpoint at another size), on
CPU in float32. It writes one compressed ``.npz`` holding ``grid{n}`` (the
input, float32 [1, 1 + n², 8]), ``grid{n}_to{g}`` (timm's output, float32
[1, 1 + g², 8]) and ``versions`` (JSON text: torch, timm, numpy). The cases
enlarge (4 -> 6, 7 -> 12) and shrink (4 -> 3); the golden ViT logits cover
14 -> 4. tests/test_vit.py compares hpajax.models.vit.resample_pos_embed
(NumPy) with them.

Only numpy, json, pathlib and absl are imported at the top level.
"""

import json
import pathlib

import numpy as np
from absl import app, flags

CASES = ((4, 6), (4, 3), (7, 12))  # (source grid side, target grid side)
CHANNELS = 8
SEED = 0


def main(argv):
    del argv
    import timm
    import torch
    from timm.layers import resample_abs_pos_embed

    torch.use_deterministic_algorithms(True)
    arrays = {"versions": np.array(json.dumps({"torch": torch.__version__,
                                               "timm": timm.__version__,
                                               "numpy": np.__version__}))}
    for n, g in CASES:
        posemb = np.random.default_rng(SEED).standard_normal((1, 1 + n * n, CHANNELS),
                                                             dtype=np.float32)
        with torch.no_grad():
            resized = resample_abs_pos_embed(torch.from_numpy(posemb), new_size=(g, g),
                                             num_prefix_tokens=1).numpy()
        assert resized.shape == (1, 1 + g * g, CHANNELS), resized.shape
        arrays[f"grid{n}"] = posemb
        arrays[f"grid{n}_to{g}"] = resized.astype(np.float32)
        print(json.dumps({"case": f"grid{n}_to{g}", "mean": float(resized.mean())}), flush=True)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    flags.DEFINE_string("out", "tests/data/pos_embed_resample.npz", "Output .npz.")
    FLAGS = flags.FLAGS
    app.run(main)
