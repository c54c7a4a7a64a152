"""A small CNN embedding network for 28x28 images that trains in minutes on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from himl.distances import l2_normalize


class SmallCNN(nn.Module):
    """Conv(3x3)-ReLU-MaxPool blocks, then an embedding head.

    Input `[B, H, W, C]` float in [0, 1]. Heads:
    - "linear": global average pooling, linear embedding, L2 norm (unit-norm output, unless
      `normalize=False`);
    - "hist": the head of the official HIST ResNet-50 (ljin0429/HIST `code/net/resnet.py`):
      global average + global max pooling summed, a linear layer (Kaiming-normal fan_out
      weight, zero bias), LayerNorm without scale or offset (eps 1e-5). Not L2-normalised:
      the HIST loss normalises for its distances and feeds the raw output to its HGNN;
      cosine retrieval normalises at evaluation, as the official `evaluate_cos` does.
    """

    widths: Sequence[int] = (32, 64, 128)
    embedding_dim: int = 64
    normalize: bool = True
    head: str = "linear"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = (images - 0.5) / 0.5
        for i, width in enumerate(self.widths):
            x = nn.Conv(width, (3, 3), name=f"conv{i}")(x)
            x = nn.relu(x)
            if i < len(self.widths) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        if self.head == "hist":
            x = jnp.mean(x, axis=(1, 2)) + jnp.max(x, axis=(1, 2))
            kaiming_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
            x = nn.Dense(self.embedding_dim, kernel_init=kaiming_fan_out, name="embedding")(x)
            return nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, name="lnorm")(x)
        if self.head != "linear":
            raise ValueError(f"unknown head {self.head!r}; valid: linear, hist")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.embedding_dim, name="embedding")(x)
        return l2_normalize(x) if self.normalize else x
