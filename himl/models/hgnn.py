"""The two-layer hypergraph neural network (HGNN, Feng et al. AAAI 2019) of the HIST loss.

`HGNN(num_classes, hidden)(x [N, D], g [N, N], train)` computes

    z1 = leaky_relu_0.1(batchnorm(g @ (x W1 + b1)))      # theta1, bn1
    z  = g @ (z1 W2 + b2)                                # theta2, [N, num_classes] logits

with `g` the normalised hypergraph propagation matrix (`himl.losses.hist.hypergraph_laplacian`).
It matches the official HIST code (ljin0429/HIST, `code/hist.py`, class `HGNN`):

- hidden width 512 by default (`--hgnn-hidden`), no dropout, leaky ReLU slope 0.1;
- linear layers initialised like `torch.nn.Linear`: weight and bias uniform in
  `+-1/sqrt(fan_in)`;
- `BatchNorm1d` with torch semantics: momentum 0.1 (new = 0.9 old + 0.1 batch), eps 1e-5,
  normalisation by the biased batch variance in training, running variance updated with the
  *unbiased* one (flax's `nn.BatchNorm` uses the biased one, hence `TorchBatchNorm`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.1  # torch convention: weight of the new batch statistic
BN_EPSILON = 1e-5


def _torch_linear_bias_init(fan_in: int):
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, name: str) -> nn.Dense:
    """`nn.Dense` initialised as `torch.nn.Linear`: U(+-1/sqrt(fan_in)) weight and bias."""
    return nn.Dense(
        features,
        kernel_init=jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=_torch_linear_bias_init(fan_in),
        name=name,
    )


class TorchBatchNorm(nn.Module):
    """Batch normalisation over axis 0 with `torch.nn.BatchNorm1d` semantics.

    Parameters "scale" (1) and "bias" (0); batch statistics "mean" (0) and "var" (1).
    `train=True` normalises with the batch mean and biased variance and (when the
    "batch_stats" collection is mutable) updates the running statistics, the variance with
    the unbiased estimate `var * n / (n - 1)`; `train=False` uses the running statistics.
    """

    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if train:
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
                n = x.shape[0]
                unbiased = jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class HGNN(nn.Module):
    """Two hypergraph convolutions mapping node features `[N, D]` to class logits `[N, C]`."""

    num_classes: int
    hidden: int = 512

    @nn.compact
    def __call__(self, x: jax.Array, g: jax.Array, train: bool = True) -> jax.Array:
        h = torch_dense(self.hidden, x.shape[-1], "theta1")(x)
        h = g @ h
        h = TorchBatchNorm(name="bn1")(h, train)
        h = nn.leaky_relu(h, negative_slope=0.1)
        out = torch_dense(self.num_classes, self.hidden, "theta2")(h)
        return g @ out
