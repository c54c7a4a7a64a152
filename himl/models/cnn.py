"""A small CNN embedding network for 28x28 images that trains in minutes on a CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from himl.models.heads import embedding_head


class SmallCNN(nn.Module):
    """Conv(3x3)-ReLU-MaxPool blocks, then an embedding head.

    Input `[B, H, W, C]` float in [0, 1]; heads "linear" / "hist" (`himl.models.heads`).
    `dtype` is the compute dtype (e.g. bfloat16); parameters stay float32 and the embedding
    `[B, D]` is float32.
    """

    widths: Sequence[int] = (32, 64, 128)
    embedding_dim: int = 64
    normalize: bool = True
    head: str = "linear"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = (images - 0.5) / 0.5
        for i, width in enumerate(self.widths):
            x = nn.Conv(width, (3, 3), dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(x)
            if i < len(self.widths) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return embedding_head(
            x,
            head=self.head,
            embedding_dim=self.embedding_dim,
            normalize=self.normalize,
            dtype=self.dtype,
        )
