"""Image bytes -> uint8 arrays: sources, decoding, DML augmentations, lazy image arrays.

A *source* is a grain `RandomAccessDataSource` of encoded images: `len(source)` and
`source[i] -> bytes`, plus `source.name(i)` (the file, for error messages). Sources here
read plain files, members of zip archives, or an array_record split prepared by the
tensorflow-datasets builders (`himl.data.tfds_builders`). Decoding is Pillow; the
augmentations are NumPy/Pillow on the host:

- evaluation: resize the shorter side to `size / crop_fraction`, centre crop `size`;
- training: random resized crop (Szegedy et al. 2015; torchvision's algorithm, area
  `scale`, aspect `ratio`), horizontal flip, colour jitter (brightness, contrast,
  saturation), the standard DML recipe (e.g. Roth et al. 2020, "Revisiting training
  strategies and generalization performance in deep metric learning").
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from himl.data.records import MissingDataError
from himl.errors import UserError


class CorruptImageError(UserError, ValueError):
    """An image file that Pillow cannot decode; the message names the file."""


def decode(data: bytes, name: str, channels: int) -> Image.Image:
    """A Pillow image in mode RGB (`channels=3`) or L (`channels=1`).

    Grayscale images of more than 8 bits are mapped to 8 bits first (`to_8bit`), not
    clipped at 255 as Pillow's `convert` would.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # Pillow raises several types for bad data
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
        raise CorruptImageError(f"cannot decode image {name}: {reason}") from None
    image = to_8bit(image, name)
    mode = "RGB" if channels == 3 else "L"
    return image if image.mode == mode else image.convert(mode)


def header_problem(path) -> str | None:
    """Why the file at `path` is not an image Pillow can read (empty, or a header it does
    not recognise), or None. Reads the header only: a file cut short after it is found when
    decoded."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            image.size  # noqa: B018 - parsed from the header
    except Exception as e:  # Pillow raises several types for bad data
        return re.sub(r" '[^']*'$", "", str(e)) or type(e).__name__
    return None


def unreadable_images(paths) -> list[tuple[int, str]]:
    """`(index, why)` of the files among `paths` that are not readable images
    (`header_problem`). One pass in this thread: about 75 us a file here (5,840 Omniglot
    PNGs in 0.43 s cached, 1.0 s from a cold cache), where 2-16 threads were slower."""
    problems = (header_problem(p) for p in paths)
    return [(i, why) for i, why in enumerate(problems) if why is not None]


def to_8bit(image: Image.Image, name: str) -> Image.Image:
    """A grayscale image of integer mode (`I;16*`, `I`) or float mode (`F`) as mode L.

    Integers are read as 16-bit values (0..65535, the range of 16-bit PNG and TIFF files)
    and mapped by `>> 8` (65535 -> 255; a value `257 * v` -> `v`); floats are read as
    [0, 1] and mapped by `* 255`, rounded. Values outside those ranges (e.g. 32-bit counts,
    float intensities in other units), and integers all below 256 (8-bit values, which
    would map to a black image), are refused: CorruptImageError naming the file, the mode
    and the range. Other modes are returned as they are.
    """
    if not (image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16")):
        return image
    array = np.asarray(image)
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if image.mode == "F":
        if not 0 <= low <= high <= 1:  # NaN fails too
            raise CorruptImageError(
                f"cannot decode image {name}: float (mode F) values must lie in [0, 1] to map "
                f"to 8 bits, they run {low:g}..{high:g}; save the image as 8 or 16 bits"
            )
        return Image.fromarray(np.rint(array * 255).astype(np.uint8))
    if not 0 <= low <= high <= 65535:
        raise CorruptImageError(
            f"cannot decode image {name}: integer (mode {image.mode}) values must lie in "
            f"0..65535 (16 bits) to map to 8 bits, they run {low}..{high}; save the image as "
            "8 or 16 bits"
        )
    if 0 < high <= 255:  # 8-bit values in a wider mode (Image.fromarray of an int32 array)
        raise CorruptImageError(
            f"cannot decode image {name}: integer (mode {image.mode}) values run {low}..{high}, "
            "8-bit values that as 16 bits map to black; save the image as 8 bits (mode L), or "
            "pass its pixels as an integer array"
        )
    return Image.fromarray((array.astype(np.uint16) >> 8).astype(np.uint8))


def to_array(image: Image.Image) -> np.ndarray:
    """`[H, W, C]` uint8 of a Pillow image (C = 1 for mode L)."""
    array = np.asarray(image, np.uint8)
    return array[..., None] if array.ndim == 2 else array


def eval_transform(image: Image.Image, size: int, crop_fraction: float) -> np.ndarray:
    """Resize (shorter side `size / crop_fraction`) + centre crop: `[size, size, C]` uint8."""
    w, h = image.size
    short = size / crop_fraction
    scale = short / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (new_w - size) / 2, (new_h - size) / 2
    # One resample: crop box expressed in source coordinates.
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    return to_array(image.resize((size, size), Image.BILINEAR, box=box))


def random_crop_box(rng, width: int, height: int, scale, ratio) -> tuple[float, ...]:
    """A random (left, top, right, bottom) box: area fraction in `scale`, aspect in `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.integers(0, width - w + 1)
            top = rng.integers(0, height - h + 1)
            return (left, top, left + w, top + h)
    # Fallback (as torchvision): the largest centred box with a clamped aspect.
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def color_jitter(x: np.ndarray, rng, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation jitter by factors in [1 - s, 1 + s]; float [0, 1]."""
    if strength <= 0:
        return x
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    if x.shape[-1] == 3:
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(x, 0.0, 1.0)


def train_transform(image: Image.Image, rng, *, size, scale, ratio, jitter) -> np.ndarray:
    """Random resized crop + flip + colour jitter: `[size, size, C]` float32 in [0, 1]."""
    box = random_crop_box(rng, *image.size, scale, ratio)
    x = to_array(image.resize((size, size), Image.BILINEAR, box=box)).astype(np.float32) / 255
    if rng.random() < 0.5:
        x = x[:, ::-1]
    return color_jitter(x, rng, jitter).astype(np.float32)


def check_image_files(source, paths, where, show: int = 3) -> None:
    """MissingDataError / CorruptImageError naming the rows (`where`) of `source` whose
    image files are missing or not images (`unreadable_images`)."""
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        examples = "; ".join(f"{where[i]}: {paths[i]}" for i in missing[:show])
        windows = os.sep != "\\" and all("\\" in str(paths[i]) for i in missing[:show])
        raise MissingDataError(
            f"{source}: {len(missing)} of {len(paths)} listed images are missing, e.g. "
            f"{examples}"
            + ("; their paths use '\\' (Windows): write them with '/'" if windows else "")
        )
    bad = unreadable_images(paths)
    if bad:
        examples = "; ".join(f"{where[i]}: {paths[i]} ({why})" for i, why in bad[:show])
        raise CorruptImageError(
            f"{source}: {len(bad)} of {len(paths)} listed images cannot be read as images, "
            f"e.g. {examples}"
        )


class FileSource:
    """Encoded images read from files under `root` (grain RandomAccessDataSource).

    A name `"<zip>::<member>"` is a member of that archive (opened once per process,
    never pickled), so one source serves datasets whose sets come partly zipped, partly
    extracted (e.g. Omniglot).
    """

    def __init__(self, root, files, where=None, listed_in=None):
        """`where`: optional `[N]` locations of the files' listings (e.g. "list.csv:12"),
        named with the file in error messages. `listed_in`: the listing they come from (a
        manifest, a folder); given, the first `open()` or read checks every file once
        (`check_image_files`): a bad one is named before any is decoded."""
        self.root, self.files = Path(root), tuple(files)
        self.where = tuple(where) if where is not None else None
        self.listed_in, self._checked = listed_in, listed_in is None
        self._zips = {}

    def __getstate__(self):  # a worker process gets the source checked (opened) or not
        return {**self.__dict__, "_zips": {}}

    def open(self) -> None:
        if not self._checked:
            paths = [self.root / f for f in self.files]  # root / absolute = absolute
            check_image_files(self.listed_in, paths, self.where or paths)
            self._checked = True

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        path = str(self.root / self.files[i])
        if self.where is None or self.where[i] == path:
            return path
        return f"{path} ({self.where[i]})"

    def __getitem__(self, i: int) -> bytes:
        if not self._checked:
            self.open()
        archive, _, member = self.files[i].partition("::")
        try:
            if not member:
                return (self.root / archive).read_bytes()
            if archive not in self._zips:
                self._zips[archive] = zipfile.ZipFile(self.root / archive)
            return self._zips[archive].read(member)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise CorruptImageError(f"cannot read image {self.name(i)}: {e}") from None


class LazyImages:
    """`[N, size, size, C]` uint8 images decoded on demand (evaluation transform).

    Indexing with an int, a slice or an index array decodes only those images, so a
    split of a million images costs nothing until `embed_split` reads it in batches.
    """

    def __init__(self, source, indices, *, size: int, channels: int, crop_fraction: float):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.size, self.channels, self.crop_fraction = size, channels, crop_fraction

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.indices), self.size, self.size, self.channels)

    def open(self) -> None:
        """Makes the source readable now, for a source that prepares itself when opened (a
        tensorflow-datasets store, `himl.data.tfds_builders.TfdsSource`)."""
        getattr(self.source, "open", lambda: None)()

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> Image.Image:
        """The decoded image at position `i` of this split."""
        j = int(self.indices[i])
        return decode(self.source[j], self.source.name(j), self.channels)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        positions = np.arange(len(self))[key]
        out = np.empty((len(positions), self.size, self.size, self.channels), np.uint8)
        for k, i in enumerate(positions):
            out[k] = eval_transform(self.load(i), self.size, self.crop_fraction)
        return out
