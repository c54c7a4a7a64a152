"""A small CNN embedding network for 28x28 images that trains in minutes on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from himl.distances import l2_normalize


class SmallCNN(nn.Module):
    """Conv(3x3)-ReLU-MaxPool blocks, global average pooling, linear embedding, L2 norm.

    Input `[B, H, W, C]` float in [0, 1]; output `[B, embedding_dim]` with unit norm.
    """

    widths: Sequence[int] = (32, 64, 128)
    embedding_dim: int = 64
    normalize: bool = True

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = (images - 0.5) / 0.5
        for i, width in enumerate(self.widths):
            x = nn.Conv(width, (3, 3), name=f"conv{i}")(x)
            x = nn.relu(x)
            if i < len(self.widths) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.embedding_dim, name="embedding")(x)
        return l2_normalize(x) if self.normalize else x
