"""ResNet-50 (He et al., CVPR 2016) as torchvision builds it (v1.5: stride in the 3x3 conv),
the backbone of the HIST and hierarchical-contrastive papers, with himl's embedding heads.

No pretrained weights ship with himl (nothing is downloaded); the backbone starts from
torchvision's initialisation (Kaiming-normal fan_out convolutions, BatchNorm scale 1), or
from a torchvision / timm weight file the user has (`config.model.pretrained`,
`himl.models.pretrained`). RGB input is normalised with the ImageNet mean / std those
weights were trained with.

`freeze_bn=True` keeps every batch norm in inference mode during training too: it
normalises with, and never updates, the running statistics (the pretrained ones), as the
official HIST code does (ljin0429/HIST `code/train.py`: `m.eval()` on every BatchNorm2d
each epoch). The BN scale and bias still train (HIST freezes them only in its warm-up).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from himl.models.heads import embedding_head

# Plain tuples: a module constant must not start the JAX backend at import.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels), with a projection shortcut when needed."""

    filters: int
    strides: int = 1
    freeze_bn: bool = False
    dtype: Any = jnp.float32  # compute dtype; parameters and batch statistics stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
        # torch BatchNorm2d: momentum 0.1 (flax's 0.9), eps 1e-5.
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train or self.freeze_bn,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = conv(self.filters, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)))(y)
        y = nn.relu(norm()(y))
        y = norm()(conv(4 * self.filters, (1, 1))(y))
        if x.shape != y.shape:
            x = norm()(conv(4 * self.filters, (1, 1), strides=self.strides)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Bottleneck ResNet; the defaults are ResNet-50. Input `[B, H, W, C]` in [0, 1]
    (RGB normalised with the ImageNet statistics, other channel counts with 0.5/0.5)."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    embedding_dim: int = 512
    head: str = "linear"
    normalize: bool = True
    freeze_bn: bool = False
    dtype: Any = jnp.float32  # compute dtype (bfloat16: mixed precision); params float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        if images.shape[-1] == 3:
            x = (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        else:
            x = (images - 0.5) / 0.5
        x = nn.Conv(
            self.width,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train or self.freeze_bn,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            name="stem_bn",
        )(x)
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(
                    self.width * 2**stage,
                    strides,
                    freeze_bn=self.freeze_bn,
                    dtype=self.dtype,
                    name=f"stage{stage}_block{block}",
                )(x, train)
        return embedding_head(
            x,
            head=self.head,
            embedding_dim=self.embedding_dim,
            normalize=self.normalize,
            dtype=self.dtype,
        )
