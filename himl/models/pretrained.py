"""ImageNet-pretrained weights in torchvision's ResNet layout, loaded into himl's `ResNet`.

torchvision's ResNet-50 state dict (and timm's `resnet50.*`, which uses the same names)
maps one to one onto himl's ResNet-50 (`himl.models.resnet`, torchvision v1.5 layout):

    torchvision                      himl (params / batch_stats)
    conv1.weight [O, I, kh, kw]      stem_conv/kernel [kh, kw, I, O]
    bn1.{weight, bias}               stem_bn/{scale, bias}
    bn1.{running_mean, running_var}  stem_bn/{mean, var}          (batch_stats)
    layer{s+1}.{b}.conv{k}           stage{s}_block{b}/Conv_{k-1}
    layer{s+1}.{b}.bn{k}             stage{s}_block{b}/BatchNorm_{k-1}
    layer{s+1}.{b}.downsample.0/.1   stage{s}_block{b}/Conv_3 / BatchNorm_3

`fc.*` (the ImageNet classifier) and `*.num_batches_tracked` are ignored: himl's embedding
head stays freshly initialised. Every other tensor must match by name and shape; the first
that does not is named in a one-line `WeightFileError`.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from himl.models.weight_files import WeightFileError

IGNORED = re.compile(r"^fc\.|\.num_batches_tracked$")
BN_TENSORS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
# torchvision Bottleneck submodule -> himl Bottleneck submodule (flax's creation order).
BLOCK_LAYERS = (
    ("conv1", "Conv_0"),
    ("bn1", "BatchNorm_0"),
    ("conv2", "Conv_1"),
    ("bn2", "BatchNorm_1"),
    ("conv3", "Conv_2"),
    ("bn3", "BatchNorm_2"),
    ("downsample.0", "Conv_3"),
    ("downsample.1", "BatchNorm_3"),
)
BLOCK = re.compile(r"^stage(\d+)_block(\d+)$")


def _torch_layers(params) -> list[tuple[str, tuple[str, ...]]]:
    """(torchvision module name, himl module path) of every backbone layer in `params`."""
    layers = [("conv1", ("stem_conv",)), ("bn1", ("stem_bn",))]
    blocks = sorted(
        (tuple(int(g) for g in m.groups()), name) for name in params if (m := BLOCK.match(name))
    )
    for (stage, block), name in blocks:
        for torch_name, himl_name in BLOCK_LAYERS:
            if himl_name in params[name]:
                layers.append((f"layer{stage + 1}.{block}.{torch_name}", (name, himl_name)))
    return layers


def torchvision_resnet_names(params) -> list[tuple[str, str, tuple[str, ...]]]:
    """`(torch tensor name, collection, himl leaf path)` for every backbone variable.

    `params` is the ResNet's "params" collection (arrays or shape structs); the head's
    layers ("embedding", "lnorm") have no torchvision counterpart and are not listed.
    """
    out = []
    for torch_name, path in _torch_layers(params):
        module = params
        for key in path:
            module = module[key]
        if "kernel" in module:
            out.append((f"{torch_name}.weight", "params", (*path, "kernel")))
        else:
            for suffix, (collection, leaf) in BN_TENSORS.items():
                out.append((f"{torch_name}.{suffix}", collection, (*path, leaf)))
    return out


def _torch_shape(himl_shape) -> tuple[int, ...]:
    if len(himl_shape) == 4:  # flax conv kernel [kh, kw, I, O] <- torch [O, I, kh, kw]
        kh, kw, i, o = himl_shape
        return (o, i, kh, kw)
    return tuple(himl_shape)


def _to_himl(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float32)
    return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def check_torchvision_resnet(variables, weights: dict, source: str) -> None:
    """Raises WeightFileError naming the first tensor of `weights` that does not fit.

    `variables`: `{"params", "batch_stats"}` of himl's ResNet (arrays or `jax.eval_shape`
    structs); `weights`: `{torch name: array}` (`himl.models.weight_files.read_weights`).
    """
    expected = torchvision_resnet_names(variables["params"])
    for name, collection, path in expected:
        want = _torch_shape(_get(variables[collection], path).shape)
        if name not in weights:
            first = next(iter(weights), None)
            raise WeightFileError(
                f"{source}: no tensor {name!r} (himl's ResNet needs shape {want}); "
                f"torchvision's ResNet-50 names expected, the file's first is {first!r}"
            )
        got = tuple(weights[name].shape)
        if got != want:
            why = " (a different architecture?)"
            if name == "conv1.weight" and got[1:2] != want[1:2]:
                why = (
                    f" (weights for {got[1]}-channel images, the data has {want[1]}: read the "
                    f"images with {got[1]} channels, e.g. config.data.custom.channels={got[1]})"
                )
            raise WeightFileError(
                f"{source}: tensor {name!r} has shape {got}, himl's ResNet expects {want}" + why
            )
    known = {name for name, _, _ in expected}
    for name, array in weights.items():
        if name not in known and not IGNORED.search(name):
            raise WeightFileError(
                f"{source}: tensor {name!r} {tuple(array.shape)} has no place in himl's "
                "ResNet-50 (a different architecture?)"
            )


def load_torchvision_resnet(variables, weights: dict, source: str = "weights") -> dict:
    """`variables` with every backbone parameter and batch statistic taken from `weights`.

    Returns new `{"params", "batch_stats"}` dicts; the head's variables are kept as given.
    """
    check_torchvision_resnet(variables, weights, source)
    out = jax.tree.map(lambda x: x, {k: variables[k] for k in ("params", "batch_stats")})
    for name, collection, path in torchvision_resnet_names(variables["params"]):
        parent = _get(out[collection], path[:-1])
        parent[path[-1]] = _to_himl(weights[name])
    return out
