"""Training batches as a pure function of (seed, step): exactly resumable, no iterator state.

`MPerClassSampler` draws P classes x K samples (Schroff et al. 2015, PML `MPerClassSampler`)
so every anchor has positives; `HierarchicalSampler` (`himl.data.hierarchical_sampler`) gives
every anchor a partner at each label level. `SAMPLERS` names them; each lists the
`config.data` keys it is built from (`config_keys`). `augment` makes V random views of each
image (random translation by padding-and-cropping plus horizontal flip) in NumPy on the host.
"""

from __future__ import annotations

import numpy as np

from himl.data.defaults import data_config as default_data_config
from himl.data.hierarchical_sampler import HierarchicalSampler
from himl.errors import UserError, check_choice


class BatchConfigError(UserError, ValueError):
    """Batch settings (`config.data`) that the data cannot satisfy."""


class MPerClassSampler:
    """Batches of `batch_size // samples_per_class` classes x `samples_per_class` samples.

    A class with fewer than `samples_per_class` members is drawn with replacement (as in
    PML), so its images repeat in a batch; `note()` says how many classes that is.
    """

    config_keys = ("batch_size", "samples_per_class")  # the `config.data` keys it is built from
    positive_keys = ("samples_per_class",)  # with num_views, what gives an anchor positives

    @staticmethod
    def class_positives(data_config) -> int:
        """Other samples of its class (views included) each anchor has: K V - 1."""
        return data_config.samples_per_class * data_config.num_views - 1

    def __init__(self, class_labels, *, batch_size: int, samples_per_class: int, seed: int):
        class_labels = np.asarray(class_labels)
        if samples_per_class < 1 or batch_size % samples_per_class:
            raise BatchConfigError(
                f"config.data.batch_size ({batch_size}) must be a multiple of "
                f"config.data.samples_per_class ({samples_per_class})"
            )
        self.classes, inverse = np.unique(class_labels, return_inverse=True)
        self.members = [np.flatnonzero(inverse == c) for c in range(len(self.classes))]
        self.classes_per_batch = batch_size // samples_per_class
        if self.classes_per_batch > len(self.classes):
            raise BatchConfigError(
                f"config.data.batch_size={batch_size} / config.data.samples_per_class="
                f"{samples_per_class} needs {self.classes_per_batch} classes, the data has "
                f"{len(self.classes)}: lower config.data.batch_size or raise "
                "config.data.samples_per_class"
            )
        self.samples_per_class = samples_per_class
        self.seed = seed

    def note(self) -> str:
        """One line on the classes too small for a batch ("" when there is none), e.g.
        "3 of 16 classes have fewer images than config.data.samples_per_class=8 (the
        smallest has 3): their images repeat in a batch"."""
        sizes = np.array([len(m) for m in self.members])
        small = int((sizes < self.samples_per_class).sum())
        if not small:
            return ""
        return (
            f"{small} of {len(sizes)} classes have fewer images than "
            f"config.data.samples_per_class={self.samples_per_class} (the smallest has "
            f"{sizes.min()}): their images repeat in a batch"
        )

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step])

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices `[batch_size]` of training step `step` (same step, same batch)."""
        rng = self.rng(step)
        chosen = rng.choice(len(self.classes), self.classes_per_batch, replace=False)
        picks = []
        for c in chosen:
            members = self.members[c]
            replace = len(members) < self.samples_per_class
            picks.append(rng.choice(members, self.samples_per_class, replace=replace))
        return np.concatenate(picks)


def augment(images: np.ndarray, rng: np.random.Generator, *, num_views: int, pad: int = 2):
    """`num_views` random views `[B, V, H, W, C]` float32 in [0, 1] of uint8 `[B, H, W, C]`."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = np.empty((b, num_views, *images.shape[1:]), np.uint8)
    for v in range(num_views):
        dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))
        flip = rng.random(b) < 0.5
        for i in range(b):
            crop = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
            views[i, v] = crop[:, ::-1] if flip[i] else crop
    return views.astype(np.float32) / 255.0


def train_batch(split, sampler: MPerClassSampler, step: int, *, num_views: int) -> dict:
    """The batch of step `step`: {"images": [B, V, H, W, C] float32, "labels": [B, L] int32}."""
    idx = sampler.indices(step)
    rng = np.random.default_rng([sampler.seed, step, 1])
    return {
        "images": augment(split.images[idx], rng, num_views=num_views),
        "labels": split.labels[idx].astype(np.int32),
    }


# `config.data.sampler` -> the sampler (its `config_keys`: the `config.data` keys it reads).
SAMPLERS = {"m_per_class": MPerClassSampler, "hierarchical": HierarchicalSampler}
AUGMENTATIONS = ("pad_crop", "dml", "auto")  # auto: pad_crop in memory, dml for image files


def make_sampler(data_config, dataset, labels, seed: int):
    """The sampler `config.data.sampler` names, over a split's `[N, L]` labels. Prints its
    `note()`, and a note naming each batch key it ignores that is not at its default."""
    name = data_config.sampler
    check_choice(name, SAMPLERS, "config.data.sampler", error=BatchConfigError)
    if name == "m_per_class":
        sampler = MPerClassSampler(
            labels[:, dataset.class_level],
            batch_size=data_config.batch_size,
            samples_per_class=data_config.samples_per_class,
            seed=seed,
        )
    else:
        levels = labels[:, : dataset.class_level + 1]
        sampler = HierarchicalSampler(levels, batch_size=data_config.batch_size, seed=seed)
    if sampler.note():
        print(f"{name} sampler: {sampler.note()}")
    for key, value in ignored_settings(data_config).items():
        print(f"note: config.data.sampler={name} ignores config.data.{key}={value}")
    return sampler


def ignored_settings(data_config) -> dict:
    """`{key: value}` of the batch keys some sampler reads but `config.data.sampler` does
    not, where the value is not its default (so it looks meant for this run)."""
    # Read past a `ReadRecorder` (himl.train.workdir): its reads become the keys a resumed
    # run must keep, and a key that only feeds this note changes no batch.
    section = getattr(data_config, "unrecorded", data_config)
    used = SAMPLERS[section.sampler].config_keys
    defaults = default_data_config()
    keys = sorted({k for sampler in SAMPLERS.values() for k in sampler.config_keys} - set(used))
    return {k: section[k] for k in keys if k in section and section[k] != defaults[k]}


def _local(batch: dict, process_index: int, process_count: int) -> dict:
    return {k: np.split(v, process_count)[process_index] for k, v in batch.items()}


def make_batcher(data_config, dataset, seed: int, *, process_index=None, process_count=None):
    """`batcher(step) -> batch dict` for training on `dataset`'s `config.data.train_split`.

    The batch of a step depends only on (seed, step), so a resumed run sees exactly the
    batches the interrupted one would have seen. Each process gets its slice of the global
    batch (`[B / jax.process_count(), ...]`; the whole batch on one host). In-memory data
    with `augmentation="pad_crop"` (the embedded default) is batched here; lazily decoded
    data (`LazyImages`) goes through the grain pipeline of `himl.data.pipeline` with the
    DML augmentations (`augmentation="dml"`).
    """
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    split = dataset.split(data_config.train_split)
    sampler = make_sampler(data_config, dataset, split.labels, seed)
    check_choice(data_config.augmentation, AUGMENTATIONS, "augmentation", error=BatchConfigError)
    augmentation = data_config.augmentation
    if augmentation == "auto":
        augmentation = "pad_crop" if isinstance(split.images, np.ndarray) else "dml"
    if augmentation == "pad_crop":
        if not isinstance(split.images, np.ndarray):
            raise BatchConfigError("augmentation='pad_crop' needs in-memory images; use 'dml'")
        num_views = data_config.num_views  # read now: the batcher's settings are its reads
        if process_count == 1:
            return lambda step: train_batch(split, sampler, step, num_views=num_views)
        return lambda step: _local(
            train_batch(split, sampler, step, num_views=num_views),
            process_index,
            process_count,
        )
    from himl.data.pipeline import BatchAt, GrainBatcher

    if isinstance(split.images, np.ndarray):
        raise BatchConfigError("augmentation='dml' needs a lazily decoded dataset; use 'pad_crop'")
    batch_at = BatchAt(
        split,
        sampler,
        seed=seed,
        num_views=data_config.num_views,
        image_size=data_config.image_size,
        scale=data_config.crop_scale,
        ratio=data_config.crop_ratio,
        jitter=data_config.color_jitter,
        process_index=process_index,
        process_count=process_count,
    )
    return GrainBatcher(batch_at, num_workers=data_config.num_workers)


def check_data_config(data_config, *, num_devices: int = 1) -> None:
    """Raises BatchConfigError naming the `config.data` batch or augmentation key that
    cannot work, from the config alone (before any data is loaded)."""
    check_choice(data_config.sampler, SAMPLERS, "config.data.sampler", error=BatchConfigError)
    batch = data_config.batch_size
    if "samples_per_class" in SAMPLERS[data_config.sampler].config_keys:
        per_class = data_config.samples_per_class
        if batch <= 0 or per_class <= 0 or batch % per_class:
            raise BatchConfigError(
                f"config.data.batch_size ({batch}) must be a positive multiple of "
                f"config.data.samples_per_class ({per_class})"
            )
    elif batch <= 0:
        raise BatchConfigError(f"config.data.batch_size must be >= 1, got {batch}")
    if batch % num_devices:
        raise BatchConfigError(
            f"config.data.batch_size ({batch}) must divide evenly over {num_devices} devices"
        )
    check_choice(
        data_config.augmentation, AUGMENTATIONS, "config.data.augmentation", error=BatchConfigError
    )
    at_least = {"num_views": 1, "image_size": 1, "num_workers": 0}
    for key, low in at_least.items():
        if key in data_config and not data_config[key] >= low:
            raise BatchConfigError(f"config.data.{key} must be >= {low}, got {data_config[key]}")
    ranges = {  # key: (is the value in range, the range in words)
        "eval_crop": (lambda x: 0 < x <= 1, "(0, 1]"),
        "color_jitter": (lambda x: 0 <= x <= 1, "[0, 1]"),  # factors 1 +- jitter stay >= 0
        "val_fraction": (lambda x: 0 <= x < 1, "[0, 1)"),
    }
    for key, (ok, text) in ranges.items():
        if key in data_config and not ok(data_config[key]):
            raise BatchConfigError(f"config.data.{key} must be in {text}, got {data_config[key]}")
    for key, high in (("crop_scale", 1.0), ("crop_ratio", float("inf"))):
        if key in data_config and not _is_range(data_config[key], high):
            value = data_config[key]
            raise BatchConfigError(
                f"config.data.{key} must be two numbers (min, max) with 0 < min <= max <= "
                f"{high:g}, e.g. --config.data.{key}=0.5,1; got {value!r}"
            )


def _is_range(value, high: float) -> bool:
    """Whether `value` is a pair of numbers `(lo, hi)` with `0 < lo <= hi <= high`."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        return False
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return False
    return 0 < value[0] <= value[1] <= high


def class_positives(data_config) -> int:
    """Other samples of its class (views included) each anchor of a batch has, at least,
    under `config.data.sampler` (each sampler's `class_positives`)."""
    return SAMPLERS[data_config.sampler].class_positives(data_config)


# `config.data` keys the batcher reads that do not change what the batches hold (a resumed
# run may change them): worker processes only change how fast the same batches arrive.
NOT_IN_BATCHES = ("num_workers",)
