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
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image
from tqdm.auto import tqdm

from himl.data.custom import find_images
from himl.data.images import decode, eval_transform
from himl.data.registry import input_spec
from himl.errors import UserError
from himl.eval.knn import knn
from himl.models.registry import build_model


class EmbedderError(UserError, ValueError):
    """A work directory, checkpoint or image the embedder cannot use."""


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps saved in `<workdir>/checkpoints`, ascending."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def read_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run saved in `<workdir>/config.json` (fields added since: defaults)."""
    from himl.eval.run import load_run_config  # fills fields added after the run was made

    return load_run_config(workdir)


def restore_model_variables(model, config, workdir: Path, step: int | None = None):
    """`(variables, step)`: the model's params (and batch stats) from a checkpoint only.

    A partial restore: the optimizer state and the loss's variables stay on disk.
    """
    steps = checkpoint_steps(workdir)
    if not steps:
        raise EmbedderError(f"no checkpoint in {workdir / 'checkpoints'}: train first")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise EmbedderError(f"no checkpoint for step {step} in {workdir}; have {steps}")
    shape, _ = input_spec(config.data)
    dummy = jnp.zeros((1, *shape), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))
    item = {"params": {"model": abstract["params"]}}
    if abstract.get("batch_stats"):
        item["batch_stats"] = {"model": abstract["batch_stats"]}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), item)
    path = workdir / "checkpoints" / str(step) / "default"
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            out = checkpointer.restore(
                path,
                args=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True
                ),
            )
    except Exception as err:  # orbax raises many types; all mean "not this model"
        raise EmbedderError(
            f"cannot read the model of checkpoint {path.parent} with the run's config "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err
    variables = {"params": out["params"]["model"]}
    if "batch_stats" in out:
        variables["batch_stats"] = out["batch_stats"]["model"]
    return variables, step


def list_images(folder) -> list[Path]:
    """Every image file under `folder` (recursively), in sorted path order."""
    folder = Path(folder).expanduser()
    return [folder / f for f in find_images(folder)]


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
        self.model, self.variables = model, variables
        self.input_shape, self.crop_fraction = tuple(input_shape), crop_fraction
        self.metric, self.config, self.step = metric, config, step
        devices = jax.local_devices()
        self.batch_size = -(-batch_size // len(devices)) * len(devices)  # a multiple
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        self._batch_sharding = NamedSharding(mesh, P("data"))
        self.variables = jax.device_put(variables, NamedSharding(mesh, P()))
        # One compiled function per batch shape: every batch is padded to batch_size.
        self._apply = jax.jit(functools.partial(model.apply, train=False))

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
        """`[N, H, W, C]` uint8 (or float in [0, 1]) from paths or an image array."""
        if isinstance(images, str | os.PathLike):
            images = list_images(images) if Path(images).is_dir() else [images]
        if isinstance(images, Sequence) and images and isinstance(images[0], str | os.PathLike):
            return np.stack([self.load_image(p) for p in images])
        array = np.asarray(images)
        h, w, c = self.input_shape
        if array.ndim == 3 and c == 1:
            array = array[..., None]
        if array.ndim != 4:
            raise EmbedderError(f"images must be [N, H, W(, C)] or paths, got shape {array.shape}")
        if array.shape[1:] == (h, w, c):
            return array
        if array.dtype != np.uint8:
            raise EmbedderError(
                f"float images must already be {h}x{w}x{c}, got {array.shape[1:]}; pass uint8 "
                "images (resized here) or paths"
            )
        return np.stack([self.prepare(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a))
                         for a in array])  # fmt: skip

    # --- embedding and search ---
    def embed(self, images, *, progress: bool = False) -> np.ndarray:
        """Embeddings `[N, D]` float32 of images (paths, a folder, or `[N, H, W(, C)]`).

        uint8 arrays are scaled to [0, 1] as in training; paths are decoded and
        resized/cropped batch by batch, so a large folder never sits in memory at once.
        """
        paths = None
        if isinstance(images, str | os.PathLike):
            paths = list_images(images) if Path(images).is_dir() else [Path(images)]
        elif isinstance(images, Sequence) and images and isinstance(images[0], str | os.PathLike):
            paths = list(images)
        count = len(paths) if paths is not None else len(images)
        if count == 0:
            raise EmbedderError("no images to embed")
        chunks = []
        for start in tqdm(range(0, count, self.batch_size), desc="embedding", leave=False,
                          disable=not progress, unit="batch"):  # fmt: skip
            part = slice(start, start + self.batch_size)
            batch = self.as_batch(paths[part] if paths is not None else np.asarray(images[part]))
            chunks.append(self._embed_batch(batch))
        return np.concatenate(chunks)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        x = batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else batch
        x = np.asarray(x, np.float32)
        if n < self.batch_size:  # pad: one compiled shape
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), np.float32)])
        out = self._apply(self.variables, jax.device_put(x, self._batch_sharding))
        return np.asarray(out, np.float32)[:n]

    def gallery(self, images, *, labels=None, progress: bool = False) -> Gallery:
        """Embeds `images` once and returns a searchable `Gallery` of them."""
        items = list_images(images) if isinstance(images, str | os.PathLike) else images
        return Gallery(self, self.embed(items, progress=progress), items=items, labels=labels)


class Gallery:
    """Embedded images to search with `search(queries, k)` (exact kNN, `himl.eval.knn`).

    Attributes:
      embeddings: `[G, D]` float32; items: the paths (or the image array) embedded;
      labels: optional per-item labels (anything indexable), returned with results.
    """

    def __init__(self, embedder: Embedder, embeddings: np.ndarray, *, items=None, labels=None):
        self.embedder, self.embeddings = embedder, np.asarray(embeddings, np.float32)
        self.items, self.labels = items, labels

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries, *, k: int = 5, block_size: int = 4096):
        """`(indices [Q, k] int32, scores [Q, k] float32)`, best first.

        `queries`: images as `Embedder.embed` takes them, or embeddings `[Q, D]` float.
        Scores are cosine similarities (descending) or Euclidean distances (ascending),
        per the run's metric; ties go to the smaller gallery index.
        """
        array = None if isinstance(queries, str | os.PathLike) else np.asarray(queries)
        is_embedding = (
            array is not None
            and array.ndim == 2
            and array.dtype.kind == "f"
            and array.shape[1] == self.embeddings.shape[1]
        )
        q = array if is_embedding else self.embedder.embed(queries)
        k = min(k, len(self))
        return knn(q, self.embeddings, k=k, metric=self.embedder.metric, block_size=block_size)


def load_embedder(workdir, step: int | None = None, *, batch_size: int = 128) -> Embedder:
    """The embedding network of a `himl-train` work directory, ready to embed images.

    Args:
      workdir: a work directory (its `config.json` and `checkpoints/`), or one of its
        checkpoints `<workdir>/checkpoints/<step>`.
      step: the checkpoint step (default: the latest).
      batch_size: images per compiled call (rounded up to a multiple of the devices).
    """
    workdir = Path(workdir).expanduser()
    if workdir.name.isdigit() and workdir.parent.name == "checkpoints":
        workdir, step = workdir.parent.parent, int(workdir.name) if step is None else step
    if not workdir.is_dir():
        raise EmbedderError(f"work directory {workdir} does not exist")
    config = read_run_config(workdir)
    model = build_model(config.model)
    variables, step = restore_model_variables(model, config, workdir, step)
    shape, crop = input_spec(config.data)
    return Embedder(
        model, variables, input_shape=shape, crop_fraction=crop, metric=config.eval.metric,
        config=config, step=step, batch_size=batch_size,
    )  # fmt: skip
