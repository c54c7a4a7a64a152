"""Reading published weight files into `{name: np.ndarray}` without PyTorch.

- `.safetensors` (timm, Hugging Face and others): through `safetensors.numpy`.
- `.pth` / `.pt` / `.bin` state dicts written by `torch.save`, in both of its formats:
  the zip archive of torch >= 1.6 (`<name>/data.pkl` + raw storages `<name>/data/<key>`;
  torchvision's resnet50-0676ba61.pth and resnet50-11ad3fa6.pth) and the older "legacy"
  stream (magic number, pickle, then the raw storages; resnet50-19c8e357.pth).

A `.pth` is a pickle, and unpickling runs whatever callables it names. `_TorchUnpickler`
allows only the handful that a state dict needs (`OrderedDict`, torch's tensor rebuild
functions and storage types), mapped to NumPy, so a file naming anything else is refused
instead of executed. Anything this reader does not understand is converted once, with
PyTorch, by `python -m himl.models.convert_weights IN OUT.safetensors`.

A training checkpoint that wraps its weights (`{"state_dict": ...}` or `{"model": ...,
"epoch": 3}`) is unwrapped, as `convert_weights` does, and the "module." prefix of a
model trained under `nn.DataParallel` / DDP is taken off the names. A file that ends early (an
interrupted download) is reported as truncated: every storage must hold the bytes its
tensors need, and every storage the pickle names must be present.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

from himl.errors import UserError

CONVERT_HINT = "python -m himl.models.convert_weights {path} {stem}.safetensors"

# torch storage class name -> NumPy dtype of its elements.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header
# A checkpoint dict's entries that hold the state dict, unwrapped in this order
# (`convert_weights` does the same).
WRAPPER_KEYS = ("state_dict", "model")
# What a training wrapper puts before every tensor name: nn.DataParallel and DDP, and
# torch.compile's OptimizedModule.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightFileError(UserError, ValueError):
    """A weight file that is missing, unreadable, or does not fit the model."""


class WeightFileMissing(WeightFileError, FileNotFoundError):
    pass


def _unsupported(path: Path, why: str) -> WeightFileError:
    hint = CONVERT_HINT.format(path=path, stem=path.with_suffix(""))
    return WeightFileError(f"{path}: {why}; convert it once (needs PyTorch only for this): {hint}")


def _truncated(path: Path, why: str) -> WeightFileError:
    return WeightFileError(f"{path}: the file is truncated or incomplete ({why}); copy or "
                           "download it again")  # fmt: skip


class _Storage:
    """A torch storage named by the pickle: dtype and key; data filled in by the reader."""

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
        self.data: np.ndarray | None = None


class _Tensor:
    """`torch._utils._rebuild_tensor(_v2)`'s arguments, materialised once the storage is read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def to_numpy(self, path: Path) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise _truncated(path, f"no data for storage {self.storage.key}")
        # Elements the view reaches: checked, since as_strided would read past the buffer.
        reach = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if 0 not in self.size and (self.offset < 0 or reach >= len(data)):
            raise _truncated(path, f"storage {self.storage.key} holds {len(data)} elements, "
                                   f"a tensor needs {reach + 1}")  # fmt: skip
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # a contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGE_DTYPES[name]


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a state dict into `_Tensor`s, allowing nothing but the names above."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # latin1: pickles written by Python 2
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" or module.startswith("torch._"):  # a tensor type this reader lacks
            raise _unsupported(self.path, f"names {module}.{name}, which this reader lacks")
        raise WeightFileError(  # a class of a model: converting would refuse it too
            f"{self.path}: names {module}.{name}, not only tensors (a whole torch.save(model)?);"
            " loading it would run code from the file. If you trust it, load it where that "
            "class is importable and save model.state_dict() instead"
        )

    def persistent_load(self, pid):
        # zip: ("storage", type, key, location, numel); legacy adds a view (None for weights).
        if not (isinstance(pid, tuple) and pid[0] == "storage" and len(pid) in (5, 6)):
            raise _unsupported(self.path, f"has an unknown storage reference {pid!r:.60}")
        if len(pid) == 6 and pid[5] is not None:
            raise _unsupported(self.path, "uses storage views")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return self.storages[key]


def _fill(storage: _Storage, raw: bytes, numel: int, path: Path) -> None:
    """Sets `storage.data` from its raw bytes, refusing fewer bytes than `numel` needs."""
    need = numel * storage.dtype.itemsize
    if len(raw) < need:
        raise _truncated(path, f"storage {storage.key} has {len(raw)} of its {need} bytes")
    storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel)


def _load_pickle(unpickler: pickle.Unpickler, path: Path):
    try:
        return unpickler.load()
    except EOFError:
        raise _truncated(path, "it ends inside a pickle") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise _truncated(path, "it ends inside a pickle") from None
        raise _unsupported(path, f"is not a weight file this reader knows ({e})") from None


def _materialise(obj, path: Path) -> dict[str, np.ndarray]:
    for key in WRAPPER_KEYS:  # a training checkpoint that wraps the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise _unsupported(path, f"holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, value in obj.items():
        if isinstance(value, _Tensor):
            out[str(name)] = value.to_numpy(path)
    if not out:
        keys = ", ".join(map(str, obj)) or "none"
        raise WeightFileError(f"{path}: no tensors at the top level (nor under "
                              f"{' or '.join(WRAPPER_KEYS)}); its keys: {keys:.200}")  # fmt: skip
    return out


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise _unsupported(path, "is a zip archive but not one written by torch.save")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
            raise _unsupported(path, "was written on a big-endian machine")
        unpickler = _TorchUnpickler(io.BytesIO(_member(archive, pickles[0], path)), path)
        obj = _load_pickle(unpickler, path)
        for key, storage in unpickler.storages.items():
            _fill(storage, _member(archive, f"{prefix}data/{key}", path), storage.numel, path)
    return _materialise(obj, path)


def _member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise _truncated(path, f"the archive has no member {name}") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise _truncated(path, f"member {name} is damaged: {e}") from None


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(1) != pickle.PROTO:  # every torch.save stream starts with a pickle
            raise WeightFileError(
                f"{path}: neither a zip archive nor a pickle, so not a file torch.save wrote "
                "(damaged, or another format?)"
            )
        f.seek(0)
        try:
            magic = pickle.load(f)
        except Exception as e:
            raise _unsupported(path, f"is not a weight file this reader knows ({e})") from None
        if magic != LEGACY_MAGIC:
            raise _unsupported(path, "is not a weight file this reader knows")
        if _load_pickle(pickle.Unpickler(f), path) != LEGACY_PROTOCOL:
            raise _unsupported(path, "has an unknown legacy torch.save protocol")
        sys_info = _load_pickle(pickle.Unpickler(f), path)
        if not isinstance(sys_info, dict):
            raise _unsupported(path, "has an unknown legacy torch.save header")
        if not sys_info.get("little_endian", True):
            raise _unsupported(path, "was written on a big-endian machine")
        unpickler = _TorchUnpickler(f, path)
        obj = _load_pickle(unpickler, path)
        # The storages follow in this order, each as an int64 element count and its data.
        keys = _load_pickle(pickle.Unpickler(f), path)
        for key in keys:
            storage = unpickler.storages.get(str(key))
            if storage is None:
                raise _unsupported(path, f"has data for a storage {key} its pickle never names")
            header = f.read(8)
            if len(header) < 8:
                raise _truncated(path, f"it ends before storage {key}")
            (numel,) = struct.unpack("<q", header)
            _fill(storage, f.read(numel * storage.dtype.itemsize), numel, path)
    return _materialise(obj, path)


def read_weights(path) -> dict[str, np.ndarray]:
    """`{tensor name: array}` of a `.safetensors` file or a torch-saved state dict, the
    prefix that `nn.DataParallel` / DDP ("module.") or `torch.compile` ("_orig_mod.") put on
    every name taken off."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise WeightFileError(f"pretrained weights: {path} is a folder; give the weight file")
    if not path.is_file():
        raise WeightFileMissing(f"pretrained weights: no file {path}")
    return unprefixed(_read(path))


def _read(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # a truncated file, an unknown dtype...
            raise WeightFileError(f"{path}: not a readable .safetensors file ({e})") from None
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) == ZIP_MAGIC:  # a zip archive without its directory
            raise _truncated(path, "a zip archive without its central directory at the end")
    return _read_legacy(path)


def unprefixed(weights: dict) -> dict:
    """`weights` with a wrapper's prefix (`WRAPPER_PREFIXES`) taken off every name, when
    every name has it (one level at a time: DDP around a compiled model has both)."""
    while weights:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in weights)), "")
        if not prefix:
            break
        weights = {name[len(prefix) :]: value for name, value in weights.items()}
    return weights
