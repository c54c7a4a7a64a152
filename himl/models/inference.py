"""The evaluation-mode embedding function: compiled once per model and input shape.

    embed = EmbeddingFunction(model, batch_size=500)
    vectors = embed(variables, images)        # images [N, H, W, C] uint8 (or float in [0, 1])

Pixels (`pixel_array`): integer arrays of any integer dtype hold values 0..255 and are
scaled by 1/255 like uint8; float arrays (float16/32/64, bfloat16) must already be in
[0, 1]. Anything else (other integer ranges, floats outside [0, 1], bool) is refused.

Every batch is padded to `batch_size` (one compiled shape for any N) and split over the
local devices; `images` may be any array-like that slices (`LazyImages` decodes only the
slice asked for), so a large split never sits in memory at once. Used by training-time
evaluation, `himl-eval` and `himl.load_embedder`.
"""

from __future__ import annotations

import functools

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm


def is_float(dtype) -> bool:
    """Whether `dtype` is a floating-point type, ml_dtypes' bfloat16 (JAX's) included."""
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def pixel_array(images, *, error: type[Exception] = ValueError) -> np.ndarray:
    """`images` as the pixels the network takes: uint8 for an integer array (any integer
    dtype, values 0..255), float32 for a float array (float16/32/64, bfloat16, values in
    [0, 1]). Raises `error` (one line) for other values, bool or non-numeric dtypes."""
    x = np.asarray(images)
    if np.issubdtype(x.dtype, np.integer):  # bool is not an integer dtype
        if x.dtype != np.uint8 and x.size and (x.min() < 0 or x.max() > 255):
            raise error(
                f"integer images must be pixels in 0..255, got values in [{x.min()}, "
                f"{x.max()}] ({x.dtype}); scale them to 0..255, or pass floats in [0, 1]"
            )
        return x.astype(np.uint8, copy=False)
    if is_float(x.dtype):
        x = x.astype(np.float32, copy=False)
        if x.size and not (x.min() >= 0 and x.max() <= 1):  # NaN fails too
            raise error(
                f"float images must be in [0, 1], got values in [{x.min():g}, {x.max():g}]; "
                "pass uint8 pixels (0..255), or divide by 255"
            )
        return x
    raise error(f"images must be integer pixels in 0..255 or floats in [0, 1], got dtype {x.dtype}")


def _apply(model, variables, images):
    return model.apply(variables, images, train=False).astype(np.float32)


def _local_copy(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)  # replicated: every copy is the whole array
    return x


class EmbeddingFunction:
    """`fn(variables, images) -> [N, D] float32` for a Flax embedding network.

    Args:
      model: the network (`himl.models.registry.build_model`).
      batch_size: images per compiled call, rounded up to a multiple of the local devices.
    """

    def __init__(self, model, *, batch_size: int = 128):
        devices = jax.local_devices()
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        mesh = Mesh(np.array(devices), ("data",))
        self._sharding, self._replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        self._fn = jax.jit(functools.partial(_apply, model))  # one trace per input shape

    def replicate(self, variables):
        """`variables` copied to every device the batches are split over (a no-op for
        variables already there). Replicated arrays of a mesh over several processes (a
        training state) are taken from this process's copy: no array moves between hosts,
        and each process embeds on its own devices."""
        return jax.device_put(jax.tree.map(_local_copy, variables), self._replicated)

    def batch(self, variables, images: np.ndarray) -> np.ndarray:
        """Embeddings of at most `batch_size` images: integer pixels 0..255 (scaled to
        [0, 1]) or floats in [0, 1] (`pixel_array`; other values raise ValueError)."""
        return self.replicated_batch(self.replicate(variables), images)

    def replicated_batch(self, variables, images: np.ndarray) -> np.ndarray:
        """`batch` for variables already returned by `replicate` (no per-batch copy or
        check of the variables: the loops over many batches replicate once)."""
        n = len(images)
        x = pixel_array(images)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
        if n < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), np.float32)])
        out = self._fn(variables, jax.device_put(x, self._sharding))
        return np.asarray(out, np.float32)[:n]

    def __call__(self, variables, images, *, progress: bool = False, desc="embedding"):
        """Embeddings `[N, D]` float32 of `images` (any slicing array-like of pixels as
        `pixel_array` takes them), in batches."""
        variables = self.replicate(variables)
        starts = range(0, len(images), self.batch_size)
        chunks = [
            self.replicated_batch(variables, images[s : s + self.batch_size])
            for s in tqdm(starts, desc=desc, leave=False, disable=not progress, unit="batch")
        ]
        if not chunks:
            raise ValueError("no images to embed")
        return np.concatenate(chunks)
