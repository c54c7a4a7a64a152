"""`build_model(config.model)`: the embedding network a config names."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from himl.models.cnn import SmallCNN
from himl.models.resnet import ResNet


def build_model(model_config) -> nn.Module:
    """ "small_cnn" (uses `model.widths`) or "resnet50" (uses `model.freeze_bn`); both take
    `embedding_dim`, `head` and `dtype` (compute dtype; absent in configs saved before it
    existed: float32). `model.pretrained` is loaded by `himl.train.experiment`."""
    dtype = jnp.dtype(model_config.get("dtype", "float32"))
    if model_config.name == "small_cnn":
        return SmallCNN(
            widths=tuple(model_config.widths),
            embedding_dim=model_config.embedding_dim,
            head=model_config.head,
            dtype=dtype,
        )
    if model_config.name == "resnet50":
        return ResNet(
            embedding_dim=model_config.embedding_dim,
            head=model_config.head,
            dtype=dtype,
            freeze_bn=model_config.get("freeze_bn", False),
        )
    raise ValueError(f"unknown model {model_config.name!r}; valid: small_cnn, resnet50")
