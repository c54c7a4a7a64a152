"""`build_model(config.model)`: the embedding network a config names."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from himl.errors import ConfigError, check_choice
from himl.models.cnn import SmallCNN
from himl.models.resnet import ResNet

MODELS = ("small_cnn", "resnet50")
MODEL_DTYPES = ("float32", "bfloat16")


def build_model(model_config) -> nn.Module:
    """ "small_cnn" (uses `model.widths`) or "resnet50" (uses `model.freeze_bn`); both take
    `embedding_dim`, `head` and `dtype` (compute dtype; absent in configs saved before it
    existed: float32). `model.pretrained` is loaded by `himl.train.experiment`."""
    check_choice(model_config.name, MODELS, "model", error=ValueError)
    dtype = jnp.dtype(model_config.get("dtype", "float32"))
    if model_config.name == "small_cnn":
        return SmallCNN(
            widths=tuple(model_config.widths),
            embedding_dim=model_config.embedding_dim,
            head=model_config.head,
            dtype=dtype,
        )
    return ResNet(
        embedding_dim=model_config.embedding_dim,
        head=model_config.head,
        dtype=dtype,
        freeze_bn=model_config.get("freeze_bn", False),
    )


def check_model_config(model_config) -> None:
    """Raises ConfigError naming the `config.model` key that cannot build a model."""
    from himl.models.heads import HEADS

    check_choice(model_config.name, MODELS, "config.model.name")
    check_choice(model_config.head, HEADS, "config.model.head")
    dtype = model_config.get("dtype", "float32")  # absent in configs saved before it
    check_choice(dtype, MODEL_DTYPES, "config.model.dtype")
    if not model_config.embedding_dim >= 1:
        raise ConfigError(
            f"config.model.embedding_dim must be >= 1, got {model_config.embedding_dim}"
        )
    for key in ("pretrained", "freeze_bn"):  # torchvision-layout options: resnet50 only
        if model_config.get(key, None) and model_config.name != "resnet50":
            raise ConfigError(
                f"config.model.{key} needs config.model.name=resnet50, not {model_config.name!r}"
            )
    if model_config.name == "small_cnn":
        widths = tuple(model_config.widths)
        if not widths or min(widths) < 1:
            raise ConfigError(
                f"config.model.widths must be a non-empty list of ints >= 1, got {widths}"
            )
