"""Converts a PyTorch weight file that himl cannot read by itself into `.safetensors`:

    python -m himl.models.convert_weights IN.pth OUT.safetensors

Needs PyTorch, only while converting (`pip install torch`); himl reads the result without
it. Loads with `torch.load(weights_only=True)` (no code in the file is run), takes the
state dict (or its "state_dict" / "model" entry), and writes every tensor as float32 or
its integer type, contiguous, under its own name.
"""

from __future__ import annotations

import sys

from himl.errors import UserError


def convert(src: str, dst: str) -> int:
    """Writes the tensors of `src` to `dst`; returns how many."""
    try:
        import torch
    except ImportError:
        raise UserError("converting needs PyTorch: pip install torch") from None
    from safetensors.torch import save_file

    obj = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    tensors = {
        name: (t.float() if t.is_floating_point() else t).contiguous()
        for name, t in obj.items()
        if isinstance(t, torch.Tensor)
    }
    if not tensors:
        raise UserError(f"{src}: no tensors found (not a state dict)")
    save_file(tensors, dst)
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
