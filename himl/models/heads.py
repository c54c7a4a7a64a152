"""Embedding heads shared by the backbones: feature map `[B, H, W, F]` -> embedding `[B, D]`.

Called inside a backbone's `@nn.compact` method, so the layers belong to the backbone and
keep the parameter names "embedding" and "lnorm" whatever the backbone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from himl.distances import l2_normalize
from himl.errors import check_choice

HEADS = ("linear", "hist", "none")


def embedding_head(
    features: jax.Array, *, head: str, embedding_dim: int, normalize: bool, dtype=jnp.float32
):
    """Heads (the linear layer computes in `dtype`; pooling accumulates and the output
    `[B, D]` is float32, so the normalisation and the losses run in float32):

    - "linear": global average pooling, a linear layer, L2 norm (unless `normalize=False`);
    - "hist": the head of the official HIST ResNet-50 (ljin0429/HIST `code/net/resnet.py`):
      global average + global max pooling summed, a linear layer (Kaiming-normal fan_out
      weight, zero bias), LayerNorm without scale or offset (eps 1e-5). Not L2-normalised:
      the HIST loss normalises for its distances and feeds the raw output to its HGNN;
      cosine retrieval normalises at evaluation, as the official `evaluate_cos` does;
    - "none": global average pooling only, `[B, F]` (2048-d for ResNet-50), L2 norm (unless
      `normalize=False`): the backbone's own features, e.g. to evaluate ImageNet weights
      before any training, or to compare them with torchvision's.
    """
    if head == "hist":
        x = jnp.mean(features, axis=(1, 2)) + jnp.max(features, axis=(1, 2))
        kaiming_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        x = nn.Dense(embedding_dim, kernel_init=kaiming_fan_out, dtype=dtype, name="embedding")(x)
        x = x.astype(jnp.float32)
        return nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, name="lnorm")(x)
    if head == "none":
        x = jnp.mean(features, axis=(1, 2), dtype=jnp.float32)
        return l2_normalize(x) if normalize else x
    check_choice(head, HEADS, "head", error=ValueError)
    x = nn.Dense(embedding_dim, dtype=dtype, name="embedding")(jnp.mean(features, axis=(1, 2)))
    x = x.astype(jnp.float32)
    return l2_normalize(x) if normalize else x
