"""The trained embedding in use: `load_embedder(workdir)` embeds new images and searches them.

    embedder = himl.load_embedder("runs/default")         # latest checkpoint
    vectors = embedder.embed(["a.png", "b.jpg"])           # [N, D] float32
    gallery = embedder.gallery("catalogue/")               # embeds every image once
    indices, scores = gallery.search(["query.jpg"], k=5)   # exact kNN, best first

Only the embedding network's parameters are read from the checkpoint (not the optimizer
or the loss), so any checkpoint of any run loads on any number of devices. Images are
preprocessed the way the run's evaluation images were: decoded (RGB or grayscale as the
run's data), the shorter side resized to `H / crop_fraction`, centre-cropped to `H x W`
(`himl.data.images.eval_transform`). The network is compiled once per batch shape; batches
are split over every local device.

The image shape and crop are the ones himl-train recorded in the work directory
(`input.json`), so only the work directory is read. A run made before that record existed
and trained on an `.npz` (`config.data.custom.source`) takes its shape from that file's
header; when the file is not at the path saved in `config.json` (relative paths are to the
directory himl-train ran in), pass the shape: `load_embedder(workdir, input_shape=(H, W,
C))` (himl-embed `--input_shape=H,W,C`).

Pixel arrays (`himl.models.inference.pixel_array`): an array of any integer dtype holds
pixels 0..255 and is taken as uint8 (scaled by 1/255, resized when its size differs); a
float array (float16/32/64, bfloat16) must be in [0, 1] and already the network's size.
Integer values outside 0..255, floats outside [0, 1] and bool arrays are refused.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from himl.data.images import LazyImages, decode, eval_transform, to_8bit
from himl.data.listing import Listing, listing_options, read_listing
from himl.data.registry import IN_MEMORY_SHAPES, input_spec
from himl.errors import UserError
from himl.eval.knn import knn
from himl.models.inference import EmbeddingFunction, is_float, pixel_array
from himl.models.registry import build_model
from himl.runs import (
    RunError,
    load_run_config,
    read_input_spec,
    restore_model_variables,
    split_checkpoint_path,
)  # fmt: skip


class EmbedderError(UserError, ValueError):
    """A work directory, checkpoint or image the embedder cannot use."""


def image_paths(images) -> list | None:
    """The image files of a sequence of paths, or None when `images` is no such sequence
    (a path to a folder or manifest is read by `Embedder.listing`)."""
    return _all_of_kind(images, str | os.PathLike, "a path")


def pillow_images(images) -> list[Image.Image] | None:
    """`images` as a list of Pillow images (one image, or a sequence of them), or None when
    it is no Pillow image."""
    if isinstance(images, Image.Image):
        return [images]
    return _all_of_kind(images, Image.Image, "a Pillow image")


def _all_of_kind(images, kind, what: str) -> list | None:
    """`images` as a list when it is a sequence whose first item is a `kind` (None when it
    is not), refusing one of another kind further on by its index."""
    if not (isinstance(images, Sequence) and images and isinstance(images[0], kind)):
        return None
    for i, image in enumerate(images):
        if not isinstance(image, kind):
            raise EmbedderError(
                f"images[{i}] is a {type(image).__name__} where images[0] is {what}: pass one "
                "kind of image per call"
            )
    return list(images)


class Embedder:
    """A trained embedding network with the preprocessing it was trained with.

    Attributes:
      input_shape: `(H, W, C)` of the images the network takes.
      crop_fraction: evaluation resize-and-centre-crop fraction.
      metric: the run's retrieval metric ("cosine" or "euclidean").
      config: the run's config; step: the checkpoint step.
    """

    def __init__(self, model, variables, *, input_shape, crop_fraction, metric="cosine",
                 config=None, step=None, batch_size: int = 128):  # fmt: skip
        self.model = model
        self.input_shape, self.crop_fraction = tuple(input_shape), crop_fraction
        self.metric, self.config, self.step = metric, config, step
        self._embed = EmbeddingFunction(model, batch_size=batch_size)  # compiled once
        self.batch_size = self._embed.batch_size  # a multiple of the local devices
        self.variables = self._embed.replicate(variables)

    # --- preprocessing ---
    def load_image(self, path) -> np.ndarray:
        """`[H, W, C]` uint8 of an image file, preprocessed as the run's evaluation images."""
        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise EmbedderError(f"cannot read image {path}: {e.strerror or e}") from e
        return self.prepare(decode(data, str(path), self.input_shape[2]))

    def prepare(self, image: Image.Image) -> np.ndarray:
        """A Pillow image -> `[H, W, C]` uint8 the network takes."""
        h, w, c = self.input_shape
        image = image.convert("RGB" if c == 3 else "L")
        if h == w:
            return eval_transform(image, h, self.crop_fraction)
        array = np.asarray(image.resize((w, h), Image.BILINEAR), np.uint8)
        return array[..., None] if array.ndim == 2 else array

    def as_batch(self, images) -> np.ndarray:
        """`[N, H, W, C]` uint8 (or float32 in [0, 1]) from paths, Pillow images or an image
        array (any integer dtype with values 0..255 -> uint8; floats must be in [0, 1])."""
        pillow = pillow_images(images)
        if pillow is not None:
            return self._from_pillow(pillow)
        if isinstance(images, str | os.PathLike):
            images = self.listing(images).paths  # a folder, a manifest or one image
        paths = image_paths(images)
        return self._from_paths(paths) if paths is not None else self._from_array(images)

    def _from_paths(self, paths) -> np.ndarray:
        return np.stack([self.load_image(p) for p in paths])

    def _from_pillow(self, images: list[Image.Image]) -> np.ndarray:
        """Pillow images of any size and mode, prepared as decoded files are: palette
        colours looked up, 16-bit and float grayscale mapped to 8 bits (`to_8bit`), not
        read as raw numbers."""
        return np.stack([self.prepare(to_8bit(image, f"images[{i}]"))
                         for i, image in enumerate(images)])  # fmt: skip

    def _from_array(self, images) -> np.ndarray:
        array = pixel_array(images, error=EmbedderError)  # uint8, or float32 in [0, 1]
        h, w, c = self.input_shape
        if array.ndim == 3:  # [N, H, W] grayscale (converted to RGB for an RGB model)
            if array.shape[-1] in (1, 3, 4):
                raise EmbedderError(
                    f"images of shape {array.shape} look like one [H, W, C] image; pass a "
                    "batch [1, H, W, C] (image[None]), or [N, H, W] grayscale images"
                )
            array = array[..., None]
        if array.ndim != 4:
            raise EmbedderError(f"images must be [N, H, W(, C)] or paths, got shape {array.shape}")
        if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3, 4):
            raise EmbedderError(
                f"images of shape {array.shape} look channel-first [N, C, H, W] (PyTorch's); "
                "give [N, H, W, C]: np.moveaxis(images, 1, -1)"
            )
        if array.shape[1:] == (h, w, c):
            return array
        if array.dtype != np.uint8:
            raise EmbedderError(
                f"float images must already be {h}x{w}x{c}, got {array.shape[1:]}; pass integer "
                "pixels 0..255 (resized here) or paths"
            )
        return np.stack([self.prepare(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a))
                         for a in array])  # fmt: skip

    def _as_run_images(self, images: LazyImages):
        """`images` decoded from their files with the run's size, channels and crop (a
        dataset loaded with other settings, e.g. `load_custom`'s defaults, would otherwise
        be resized twice)."""
        h, w, c = self.input_shape
        if h != w:
            return images  # resized per batch from what it decodes to
        return LazyImages(images.source, images.indices, size=h, channels=c,
                          crop_fraction=self.crop_fraction)  # fmt: skip

    # --- embedding and search ---
    def embed(self, images, *, progress: bool = False) -> np.ndarray:
        """Embeddings `[N, D]` float32 of images (paths, a folder, Pillow images of any
        size and mode, or `[N, H, W(, C)]`).

        Integer arrays (uint8, int64, uint16, ...) hold pixels 0..255 and are scaled to
        [0, 1] as in training; float arrays (float16/32/64, bfloat16) must already be in
        [0, 1]; other values and bool arrays are refused (`EmbedderError`) before anything
        is embedded. Paths (and `LazyImages`, decoded from their files as the run's images
        whatever size they were loaded at) are decoded and resized/cropped batch by batch, so
        a large folder never sits in memory at once.
        """
        pillow = pillow_images(images)
        if pillow is not None:  # in memory already: prepared whole, then batched
            images = self._from_pillow(pillow)
        if isinstance(images, str | os.PathLike):
            images = self.listing(images).paths  # a folder, a manifest or one image
        paths = image_paths(images)
        count = len(paths) if paths is not None else len(images)
        if count == 0:
            raise EmbedderError("no images to embed")
        if isinstance(images, LazyImages):  # decoded as the run's images, not as loaded
            images = self._as_run_images(images)
        elif paths is None:
            images = self._from_array(images)  # checked whole, before the first batch
        chunks = []
        for start in tqdm(range(0, count, self.batch_size), desc="embedding", leave=False,
                          disable=not progress, unit="batch"):  # fmt: skip
            part = slice(start, start + self.batch_size)
            if paths is not None:
                batch = self._from_paths(paths[part])
            else:
                batch = self._from_array(images[part])
            chunks.append(self._embed.replicated_batch(self.variables, batch))
        return np.concatenate(chunks)

    def gallery(self, images, *, labels=None, progress: bool = False) -> Gallery:
        """Embeds `images` once and returns a searchable `Gallery` of them (`labels`: one
        per image, kept as the array `Gallery.labels`; by default a manifest's label
        columns or a folder tree's folder names, when `images` is one)."""
        items = images
        if isinstance(images, str | os.PathLike):
            listing = self.listing(images)
            items, labels = listing.paths, listing.labels if labels is None else labels
        return Gallery(self, self.embed(items, progress=progress), items=items, labels=labels)

    def listing(self, source) -> Listing:
        """The images a folder, a manifest (read with the run's column options) or one
        image file lists, with their labels when it has them (`himl.data.listing`)."""
        return read_listing(source, listing_options(self.config))


class Gallery:
    """Embedded images to search with `search(queries, k)` (exact kNN, `himl.eval.knn`).

    Attributes:
      embeddings: `[G, D]` float32; items: the paths (or the image array) embedded;
      labels: optional per-item labels as an array (`labels[i]` of gallery item `i`), or
        None; the labels of search results are `gallery.labels[indices]`.
    """

    def __init__(self, embedder: Embedder, embeddings: np.ndarray, *, items=None, labels=None):
        self.embedder, self.embeddings = embedder, np.asarray(embeddings, np.float32)
        self.items, self.labels = items, None if labels is None else _label_array(labels)
        if self.labels is not None and len(self.labels) != len(self.embeddings):
            raise EmbedderError(
                f"{len(self.labels)} labels for a gallery of {len(self.embeddings)} images"
            )

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries, *, k: int = 5, block_size: int = 4096):
        """`(indices [Q, k] int32, scores [Q, k] float32)`, best first (k at most the
        gallery's size: a larger k returns every item); the results' labels (when the
        gallery has labels) are `gallery.labels[indices]`.

        `queries`: images as `Embedder.embed` takes them, or float embeddings (float16/32/
        64, bfloat16) `[Q, D]`, or one embedding `[D]` (searched as `[1, D]`: results
        `[1, k]`). Scores are cosine similarities (descending) or Euclidean distances
        (ascending), per the run's metric; ties go to the smaller gallery index.
        """
        if isinstance(queries, str | os.PathLike) or pillow_images(queries) is not None:
            q = self.embedder.embed(queries)
        else:
            array, dim = np.asarray(queries), self.embeddings.shape[1]
            if is_float(array.dtype) and array.ndim <= 2:  # embeddings (images are >= 3-D)
                if array.ndim == 0 or array.shape[-1] != dim:
                    raise EmbedderError(
                        f"query embeddings must be [Q, {dim}] or [{dim}], got shape {array.shape}"
                    )
                q = array.astype(np.float32).reshape(-1, dim)
            else:
                q = self.embedder.embed(queries)
        k = min(k, len(self))
        return knn(q, self.embeddings, k=k, metric=self.embedder.metric, block_size=block_size)


def _label_array(labels) -> np.ndarray:
    """`labels` as an array indexed by gallery item: a list of tuples (one per item) gives
    `[G, L]`; items of different lengths or types give a `[G]` object array."""
    try:
        return np.asarray(labels)
    except ValueError:  # ragged
        array = np.empty(len(labels), object)
        for i, label in enumerate(labels):
            array[i] = label
        return array


def run_input_spec(
    data_config, input_shape=None, recorded=None
) -> tuple[tuple[int, int, int], float]:
    """`((H, W, C), crop_fraction)` of a run's input: `recorded` (the run's `input.json`)
    or, for runs made before it was recorded, `himl.data.registry.input_spec`.

    Such a run trained on an `.npz` has its shape in that file's header only: `input_shape`
    gives it when the file cannot be read; when it can, the two must agree."""
    custom = data_config.name == "custom"
    source = str(data_config.custom.source) if custom else ""
    known = recorded
    try:
        if known is None:
            known = input_spec(data_config)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        if not custom:
            raise
        known, why = None, getattr(e, "strerror", None) or str(e) or type(e).__name__
    if input_shape is None:
        if known is None:
            raise EmbedderError(
                f"the run was trained on config.data.custom.source={source!r}, which cannot be "
                f"read from here ({Path(source).expanduser().absolute()}: {why}); the image "
                "shape the network takes is read from it. Pass that shape with "
                "--input_shape=H,W,C (load_embedder(..., input_shape=(H, W, C))), or run "
                "from the folder himl-train ran in"
            )
        return known
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, int | np.integer) and n > 0 for n in shape):
        raise EmbedderError(f"input_shape must be three positive integers H, W, C, got {shape}")
    shape = tuple(int(n) for n in shape)
    if shape[2] not in (1, 3):
        raise EmbedderError(f"input_shape: C must be 1 (grayscale) or 3 (RGB), got {shape[2]}")
    if known is not None and known[0] != shape:
        raise EmbedderError(f"input_shape {shape} differs from the run's {known[0]}")
    if known is not None:
        return shape, known[1]
    in_memory = data_config.name in IN_MEMORY_SHAPES or source.lower().endswith(".npz")
    return shape, 1.0 if in_memory else data_config.eval_crop


def load_embedder(workdir, step: int | None = None, *, batch_size: int = 128,
                  input_shape=None) -> Embedder:  # fmt: skip
    """The embedding network of a `himl-train` work directory, ready to embed images.

    Args:
      workdir: a work directory (its `config.json` and `checkpoints/`), or one of its
        checkpoints `<workdir>/checkpoints/<step>`.
      step: the checkpoint step (default: the latest).
      batch_size: images per compiled call (rounded up to a multiple of the devices).
      input_shape: `(H, W, C)` the network was trained on; needed only for a run made
        before himl-train recorded it (`input.json`), trained on an `.npz` that is no longer
        at its `config.data.custom.source` path.
    """
    workdir, step = split_checkpoint_path(workdir, step)
    if not workdir.is_dir():
        raise EmbedderError(f"work directory {workdir} does not exist")
    config = load_run_config(workdir)
    model = build_model(config.model)
    shape, crop = run_input_spec(config.data, input_shape, read_input_spec(workdir))
    try:
        variables, step = restore_model_variables(model, shape, workdir, step)
    except RunError as e:
        if input_shape is None:
            raise
        raise EmbedderError(f"input_shape {shape} does not fit the run's network ({e})") from None
    return Embedder(
        model, variables, input_shape=shape, crop_fraction=crop, metric=config.eval.metric,
        config=config, step=step, batch_size=batch_size,
    )  # fmt: skip
