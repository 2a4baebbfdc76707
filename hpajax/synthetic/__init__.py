"""Synthetic HPA-like data in the Kaggle 2019 layout, for tests and benchmarks.

``generate`` writes ``OUT/train.csv`` (``Id,Target``) and
``OUT/train/{Id}_{red,green,blue,yellow}.png`` (8-bit grayscale), or with
``test=True`` ``OUT/test/`` and ``OUT/sample_submission.csv``, exactly like
the real download, so every later stage can run end to end without it.

Labels follow the real statistics: by default a built-in model whose class
marginals equal ``KAGGLE_TRAIN_COUNTS / KAGGLE_TRAIN_SIZE`` and whose
co-occurrences follow the real file's (``label_model``); or label sets
resampled from a real ``train.csv``.

Images look like HPA confocal fields: a dark background with a few irregular
cells; blue nuclei, red radial microtubules and yellow perinuclear ER. The
green channel carries one distinct pattern per class in the class's
compartment (``patterns.GREEN``), overlaid for multi-label samples, so a model can
learn the classes. Rendering is vectorized NumPy plus PIL drawing.

Everything is a function of ``(seed, split, index)``: sample ``i`` gets its
own generator, so output is identical for any worker count.

Pattern sizes are written in pixels of a 512 px image and scale with the
image size. Nothing here imports JAX.

Modules: ``label_model`` (labels), ``scene`` (cells and per-pixel fields),
``patterns`` (the green channel per class), ``render`` (one sample),
``kaggle_files`` (PNGs, CSV, ``generate``).
"""

from hpajax.synthetic.kaggle_files import generate, sample_id
from hpajax.synthetic.label_model import read_label_sets, sample_labels
from hpajax.synthetic.render import render

__all__ = ["generate", "read_label_sets", "render", "sample_id", "sample_labels"]
