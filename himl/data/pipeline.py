"""grain input pipeline for lazily decoded datasets: batches as a function of (seed, step).

`GrainBatcher(step)` returns this process's slice of the global batch of `step`:
{"images": [B / P, V, S, S, C] float32 in [0, 1], "labels": [B / P, L] int32} for P =
`jax.process_count()`. The sampler picks the global indices of the step; each process
decodes only its `jax.process_index()`-th slice and augments every sample with its own
RNG `(seed, step, position in the global batch, view)`, so the global batch is the same
for any number of processes or workers. A grain `MapDataset` over steps, with
`mp_prefetch` worker processes when `num_workers > 0`, computes batches ahead; the
iterator position is the step, so resuming from `TrainState.step` restarts it there and
yields exactly the batches of the uninterrupted run (no iterator state to checkpoint).
"""

from __future__ import annotations

import grain
import numpy as np

from himl.data.images import train_transform


class BatchAt:
    """step -> the process-local batch (picklable, for grain worker processes)."""

    def __init__(self, split, sampler, *, seed, num_views, image_size, scale, ratio, jitter,
                 process_index=0, process_count=1):  # fmt: skip
        self.split, self.sampler, self.seed = split, sampler, seed
        self.num_views, self.image_size = num_views, image_size
        self.scale, self.ratio, self.jitter = tuple(scale), tuple(ratio), jitter
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, step: int) -> dict:
        step = int(step)
        idx = self.sampler.indices(step)
        if len(idx) % self.process_count:
            raise ValueError(f"batch {len(idx)} does not split over {self.process_count} hosts")
        per = len(idx) // self.process_count
        positions = np.arange(per) + self.process_index * per
        views = []
        for p in positions:
            image = self.split.images.load(int(idx[p]))
            sample = []
            for v in range(self.num_views):
                rng = np.random.default_rng([self.seed, step, 2, int(p), v])
                sample.append(
                    train_transform(
                        image,
                        rng,
                        size=self.image_size,
                        scale=self.scale,
                        ratio=self.ratio,
                        jitter=self.jitter,
                    )  # fmt: skip
                )
            views.append(np.stack(sample))
        return {
            "images": np.stack(views).astype(np.float32),
            "labels": self.split.labels[idx[positions]].astype(np.int32),
        }


class GrainBatcher:
    """`batcher(step)`: batches from a grain iterator that starts (again) at any step."""

    def __init__(self, batch_at: BatchAt, *, num_workers: int, prefetch: int = 2):
        self.batch_at, self.num_workers, self.prefetch = batch_at, num_workers, prefetch
        self._iterator, self._next_step = None, None

    def _start(self, step: int):
        ds = (
            grain.MapDataset.range(step, 2**31 - 1)
            .map(self.batch_at)
            .to_iter_dataset(
                grain.ReadOptions(num_threads=self.prefetch, prefetch_buffer_size=self.prefetch)
            )
        )
        if self.num_workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (library use)
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        self._iterator, self._next_step = iter(ds), step

    def __call__(self, step: int) -> dict:
        if self.num_workers == 0 and self.prefetch == 0:
            return self.batch_at(step)
        if self._iterator is None or step != self._next_step:
            self._start(step)  # first call, resume or a jump: restart at `step`
        self._next_step += 1
        return next(self._iterator)
