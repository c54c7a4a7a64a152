"""Fashion-MNIST (Xiao et al., 2017) with a garment hierarchy: group -> class -> instance.

Reads the four original IDX files (gzip or plain) from a folder the user has, e.g.
`../shared/data/fashion-mnist` or Debian's `/usr/share/datasets/fashion-mnist`
(package `dataset-fashion-mnist`). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from himl.errors import UserError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
GROUP_NAMES = ("tops", "bottoms", "dresses", "footwear", "bags")
# Coarse garment group of each class (index into GROUP_NAMES).
CLASS_TO_GROUP = np.array([0, 1, 0, 2, 0, 3, 0, 3, 4, 3])
LEVEL_NAMES = ("group", "class", "instance")

# Class-disjoint split: the unseen classes sit under seen groups (tops, footwear), the
# seen/unseen protocol of Zhang et al. (CVPR 2022). Shirt vs. Pullover is the hardest
# pair in Fashion-MNIST, so unseen-class retrieval is not trivially solved by pixels.
UNSEEN_CLASSES = (2, 6, 9)  # Pullover, Shirt, Ankle boot
SEEN_CLASSES = tuple(c for c in range(10) if c not in UNSEEN_CLASSES)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}. Get the four IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist (or `apt install "
        "dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist) and pass that folder."
    )


class IDXFileError(UserError, ValueError):
    """An IDX file that cannot be read (not gzip, truncated, wrong format)."""


def read_idx(path: Path) -> np.ndarray:
    """Reads one IDX file (the MNIST format: big-endian dims after a 4-byte magic).

    Raises IDXFileError naming the file when it is not gzip despite `.gz`, is cut short
    (in the gzip stream or in the array), or is not an unsigned-byte IDX file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except gzip.BadGzipFile as err:
        raise IDXFileError(
            f"{path} is not a gzip file ({err}); expected a gzipped IDX file"
        ) from err
    except (EOFError, zlib.error) as err:
        raise IDXFileError(f"{path} is truncated or corrupt (gzip stream: {err})") from err
    except OSError as err:
        raise IDXFileError(f"cannot read {path}: {err.strerror or err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise IDXFileError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise IDXFileError(f"{path} is truncated: {len(data)} bytes, its header alone needs more")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise IDXFileError(
            f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_idx_split(folder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 28, 28]` uint8 and class labels `[N]` int of the "train" or "test" file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {folder} does not exist")
    image_stem, label_stem = IDX_FILES[split]
    images = read_idx(_find(folder, image_stem))
    labels = read_idx(_find(folder, label_stem)).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise IDXFileError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    bad = np.flatnonzero(labels >= len(CLASS_NAMES))
    if bad.size:
        raise IDXFileError(
            f"{folder / label_stem}: row {bad[0]} has label {labels[bad[0]]}, Fashion-MNIST "
            f"labels are 0..{len(CLASS_NAMES) - 1}"
        )
    return images, labels


def label_matrix(classes: np.ndarray, instance_ids: np.ndarray) -> np.ndarray:
    """`[N, 3]` labels (group, class, instance) from class labels and unique instance ids."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.stack([CLASS_TO_GROUP[classes], classes, np.asarray(instance_ids)], axis=1)
