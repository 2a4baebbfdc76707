"""Runs exported models as a user without hpajax would: only jax, numpy and onnxruntime.

    python tests/exported_outside.py IMAGES.npy OUT.npz NAME=FOLDER...

An import hook refuses every installed module but the standard library's,
those of jax, numpy and onnxruntime, and what they depend on (their
distributions' requirements, recursively); it first checks that hpajax and
flax are refused.
Each FOLDER's model.jax_export and model.onnx then predict IMAGES (uint8
[N, S, S, C]) in batches of 1 and of N - 1 (two sizes of the free batch
axis), saved as OUT's NAME/stablehlo/BATCH and NAME/onnx/BATCH.
"""

import importlib.abc
import importlib.metadata
import re
import sys

ALLOWED_DISTRIBUTIONS = ("jax", "numpy", "onnxruntime")


def dependencies(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` need at run time, recursively (extras excluded)."""
    seen, todo = set(), list(names)
    while todo:
        name = re.split(r"[\s<>=!~;\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [r for r in requires if "extra ==" not in r]
    return seen


def allowed_modules() -> set[str]:
    distributions = dependencies(ALLOWED_DISTRIBUTIONS) | {"jaxlib"}
    modules = set(sys.stdlib_module_names) | {"jax_plugins"}  # where jax looks for GPU plugins
    for module, dists in importlib.metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in distributions for d in dists):
            modules.add(module)
    return modules


class Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str]):
        self.allowed = allowed

    def find_spec(self, fullname, path, target=None):
        """None (the next finder's turn) for an allowed module or one not installed."""
        top = fullname.split(".")[0]
        if top in self.allowed or top.startswith("_sysconfigdata"):  # the stdlib's
            return None
        if all(f.find_spec(top, None) is None for f in sys.meta_path
               if f is not self and hasattr(f, "find_spec")):
            return None  # not installed: a probe gets None, an import its usual error
        raise ImportError(f"{fullname}: not available to an exported model's user")


def main(images_path: str, out_path: str, *folders: str) -> None:
    sys.meta_path.insert(0, Refuse(allowed_modules()))
    for name in ("hpajax", "flax"):
        try:
            __import__(name)
        except ImportError:
            continue
        raise SystemExit(f"{name} could be imported")
    import jax
    import numpy as np
    import onnxruntime

    images = np.load(images_path)
    out = {}
    for entry in folders:
        name, folder = entry.split("=", 1)
        with open(f"{folder}/model.jax_export", "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        session = onnxruntime.InferenceSession(f"{folder}/model.onnx",
                                               providers=["CPUExecutionProvider"])
        for batch in (1, len(images) - 1):
            parts = [images[i:i + batch] for i in range(0, len(images), batch)]
            out[f"{name}/stablehlo/{batch}"] = np.concatenate(
                [np.asarray(exported.call(p)) for p in parts])
            out[f"{name}/onnx/{batch}"] = np.concatenate(
                [session.run(None, {"images": p})[0] for p in parts])
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:])
