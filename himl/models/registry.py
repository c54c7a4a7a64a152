"""`build_model(config.model)`: the embedding network a config names."""

from __future__ import annotations

import flax.linen as nn

from himl.models.cnn import SmallCNN


def build_model(model_config) -> nn.Module:
    if model_config.name == "small_cnn":
        return SmallCNN(
            widths=tuple(model_config.widths),
            embedding_dim=model_config.embedding_dim,
            head=model_config.get("head", "linear"),
        )
    raise ValueError(f"unknown model {model_config.name!r}; valid: small_cnn")
