"""A human-readable summary of a store: what it holds and how it is split."""

from __future__ import annotations

from hpajax import classes
from hpajax.data.store import IMAGES, Store
from hpajax.files import files_under


def describe(store: Store) -> str:
    """Size, layout and, per saved split, class counts of every part."""
    m = store.metadata
    n, size = len(store), store.image_size
    sizes = [f.stat().length for f in files_under(store.path / IMAGES)]
    disk, files = sum(sizes), len(sizes)
    lines = [
        f"store      {store.path}",
        f"samples    {n} x {size}x{size}x{len(store.channels)} uint8 "
        f"({', '.join(store.channels)}), from {m.get('format', '?')} {m.get('source', '')}",
        f"on disk    {disk / 2**20:.1f} MiB in {files} files, {disk / max(n, 1) / 1e3:.1f} kB/sample "
        f"(codec {m.get('codec')}, {m.get('shard_samples')} samples/shard)",
        f"bad        {m.get('num_bad', 0)} sample(s) left out",
    ]
    if store.labels is None:
        return "\n".join(lines + ["labels     none (unlabeled set)"])
    lines.append(f"labels     {store.labels.sum() / max(n, 1):.2f} per sample")
    for name in store.split_names():
        lines += _split_table(store, name)
    return "\n".join(lines)


def _split_table(store: Store, name: str) -> list[str]:
    """Per-class positives in each part of a split."""
    parts = store.split(name)
    header = f"{'class':<32}" + "".join(f"{p:>8}" for p in parts)
    sizes = f"{'(samples)':<32}" + "".join(f"{len(ix):>8}" for ix in parts.values())
    counts = {p: store.labels[ix].sum(axis=0) for p, ix in parts.items()}
    rows = [f"{f'{c:2d} {classes.CLASS_NAMES[c]}':<32}"
            + "".join(f"{int(counts[p][c]):>8}" for p in parts)
            for c in range(classes.NUM_CLASSES)]
    return ["", f"split '{name}'", header, sizes, *rows]

