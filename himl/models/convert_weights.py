"""Converts a PyTorch weight file that himl cannot read by itself into `.safetensors`:

    python -m himl.models.convert_weights IN.pth OUT.safetensors

Needs PyTorch, only while converting (`pip install torch`); himl reads the result without
it. Loads with `torch.load(weights_only=True)` (no code in the file is run), takes the
state dict (or its "state_dict" / "model" entry, as `weight_files.read_weights` does), and
writes every tensor as float32 or its integer type, contiguous, under its own name (less
the prefix DataParallel, DDP or torch.compile put on every name: `weight_files.unprefixed`).

A missing or unreadable input, or a file that pickles more than tensors (a whole
`torch.save(model)`), is reported in one line.
"""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

from himl.errors import UserError
from himl.models.weight_files import WRAPPER_KEYS, unprefixed


def _load(src: Path, torch):
    if not src.is_file():
        raise UserError(f"no file {src}")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses any other Python object
        named = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (it names {named[1]})" if named else ""
        raise UserError(
            f"{src}: holds pickled Python objects, not only tensors{what}, e.g. a whole "
            "torch.save(model); loading it would run code from the file. If you trust it, "
            "load it where its classes are importable and save model.state_dict() instead"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{src}: PyTorch cannot read it, truncated or damaged? ({first})") from None


def _check_output(dst: Path) -> None:
    if dst.suffix != ".safetensors":
        raise UserError(f"{dst}: the output is a .safetensors file, name it OUT.safetensors")
    if not dst.parent.is_dir():
        raise UserError(f"{dst}: no folder {dst.parent} to write it in")


def convert(src, dst) -> int:
    """Writes the tensors of `src` to `dst` (a `.safetensors` file); returns how many."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    _check_output(dst)  # before the slow part
    try:
        import torch
    except ImportError:
        raise UserError("converting needs PyTorch: pip install torch") from None
    from safetensors.torch import save_file

    obj = _load(src, torch)
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"{src}: holds a {type(obj).__name__}, not a state dict")
    tensors = {
        name: (t.float() if t.is_floating_point() else t).contiguous()
        for name, t in obj.items()
        if isinstance(t, torch.Tensor)
    }
    if not tensors:
        keys = ", ".join(map(str, obj)) or "none"
        raise UserError(f"{src}: no tensors at the top level (nor under "
                        f"{' or '.join(WRAPPER_KEYS)}); its keys: {keys:.200}")  # fmt: skip
    save_file(unprefixed(tensors), str(dst))
    return len(tensors)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        count = convert(*argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count} tensors to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
