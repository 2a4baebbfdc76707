"""Converts a PyTorch checkpoint into a ``.safetensors`` file for ``model.init_from``.

  .venv/bin/pip install -e '.[torch]'   # once: torch is optional
  .venv/bin/python tools/torch_to_safetensors.py --input=resnet34-b627a593.pth \
      --output=resnet34.safetensors

The input is a state dict as torchvision publishes it, or a training
checkpoint holding one under ``"state_dict"`` or ``"model"``; a DataParallel
``module.`` prefix is dropped. Tensors keep torch's names and layout (see
``hpajax.models.weights``); float16 and bfloat16 become float32, integers
keep their dtype; anything else in the state dict is reported and skipped.
The tool is the one part of hpajax that needs torch, and only ``_load`` and
``_tensor_to_numpy`` import it: the rest runs (and is tested) without.
"""

import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import app, flags
from safetensors import SafetensorError
from safetensors.numpy import save_file

_INPUT = flags.DEFINE_string("input", None, "PyTorch checkpoint (.pth, .pt) to read.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "The .safetensors file to write.", required=True)
flags.register_validator("output", lambda p: p is None or p.endswith(".safetensors"),
                         "--output must end with .safetensors")

_TOOL = "tools/torch_to_safetensors.py"
_WRAPPERS = ("state_dict", "model")  # where training checkpoints keep the state dict
_PREFIX = "module."  # DataParallel's and DistributedDataParallel's
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # not parameters
_HALF = ("float16", "bfloat16")


def unwrap(checkpoint: Any) -> Mapping:
    """The state dict of a checkpoint: ``checkpoint`` itself, or the mapping under
    ``"state_dict"`` or ``"model"`` (repeatedly)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"holds a {type(checkpoint).__name__}, not a dict of tensors")
    for key in _WRAPPERS:
        if isinstance(checkpoint.get(key), Mapping):
            return unwrap(checkpoint[key])
    return checkpoint


def to_numpy(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array (an ndarray, or anything with ``.numpy()``), else None."""
    if isinstance(value, np.ndarray):
        return value
    if callable(getattr(value, "numpy", None)):
        return np.asarray(value.numpy())
    return None


def clean_state(checkpoint: Any, convert: Callable[[Any], np.ndarray | None] = to_numpy
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tensors of a checkpoint's state dict as contiguous NumPy arrays (half floats
    as float32) without a common ``module.`` prefix, and one line per entry skipped.

    ``convert`` turns a value into an array, or None for a value that is not a tensor.
    Raises ValueError where the checkpoint is no dict or holds no tensors.
    """
    arrays, skipped = {}, []
    for key, value in unwrap(checkpoint).items():
        array = convert(value)
        if array is None:
            skipped.append(f"skipped {key}: {type(value).__name__}, not a tensor")
            continue
        if array.dtype.name in _HALF:
            array = array.astype(np.float32)
        arrays[str(key)] = np.ascontiguousarray(array)
    if not arrays:
        raise ValueError("no tensors found in it")
    if all(key.startswith(_PREFIX) for key in arrays):
        arrays = {key.removeprefix(_PREFIX): array for key, array in arrays.items()}
    return arrays, skipped


def count_parameters(arrays: Mapping[str, np.ndarray]) -> int:
    """The number of values of ``arrays``, BatchNorm's running statistics aside."""
    return sum(a.size for key, a in arrays.items() if not key.endswith(_BUFFERS))


def write_atomically(arrays: dict[str, np.ndarray], path: str) -> None:
    """``arrays`` as a safetensors file at ``path``, which appears only once complete."""
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                     dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        save_file(arrays, temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _load(path: str) -> Any:
    """The object saved in a torch checkpoint file, read without running its code."""
    import torch  # noqa: PLC0415  (optional: pip install -e '.[torch]')

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch.load raises many kinds for a bad file)
        # The first line of torch's message, or of the detail of a weights-only refusal.
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().partition("\n")[0]
        if found := re.match(r"Unsupported global: GLOBAL (\S+)", detail):
            raise ValueError(f"it pickles a {found[1]}, not just tensors (which is all that is "
                             "read, running no code): save model.state_dict() instead") from None
        raise ValueError(f"cannot read it as a torch checkpoint ({type(e).__name__}: "
                         f"{detail})") from None


def _tensor_to_numpy(value: Any) -> np.ndarray | None:
    """A torch tensor as a NumPy array (bfloat16, which NumPy lacks, as float32), else None."""
    import torch  # noqa: PLC0415

    if not isinstance(value, torch.Tensor):
        return None
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    source, output = _INPUT.value, _OUTPUT.value
    if not os.path.isfile(source):
        sys.exit(f"{_TOOL}: error: --input={source}: no such file")
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        sys.exit(f"{_TOOL}: error: reading a PyTorch checkpoint needs torch, which is "
                 "optional: pip install -e '.[torch]' in the checkout (or pip install torch)")
    try:
        arrays, skipped = clean_state(_load(source), _tensor_to_numpy)
    except ValueError as e:
        sys.exit(f"{_TOOL}: error: --input={source}: {e}")
    for line in skipped:
        print(line, file=sys.stderr)
    try:
        write_atomically(arrays, output)
    except (OSError, SafetensorError) as e:
        sys.exit(f"{_TOOL}: error: --output={output}: cannot write it ({e})")
    print(f"wrote {len(arrays)} tensors, {count_parameters(arrays):,} parameters to {output}")


if __name__ == "__main__":
    app.run(main)
