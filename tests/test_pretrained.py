"""Pretrained backbones without PyTorch: reading weight files, one-line errors for files
that do not fit, frozen batch norm, and the head-only warm-up from pretrained weights.
(tests/test_pretrained_torch.py proves the name mapping against PyTorch itself.)"""

import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from himl.config_lib import ConfigError, validate_config
from himl.errors import UserError
from himl.models.pretrained import load_torchvision_resnet, torchvision_resnet_names
from himl.models.resnet import ResNet
from himl.models.weight_files import WeightFileError, WeightFileMissing, read_weights

SMALL = dict(stage_sizes=(1, 2), width=4)


def _variables(model, channels=3, side=16):
    return model.init(jax.random.key(0), jnp.zeros((1, side, side, channels)), train=False)


def _state_dict(variables, seed=0) -> dict:
    """Random tensors with torchvision's names and shapes for `variables`' backbone."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, collection, path in torchvision_resnet_names(variables["params"]):
        leaf = variables[collection]
        for key in path:
            leaf = leaf[key]
        shape = leaf.shape
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        if len(shape) == 4:  # He-normal (fan_out), as torchvision initialises its convs
            values = rng.normal(0.0, (2.0 / (shape[0] * shape[2] * shape[3])) ** 0.5, shape)
        elif name.endswith(("bias", "running_mean")):
            values = rng.normal(0.0, 0.1, shape)
        else:  # BN scale and running variance: positive, around 1
            values = rng.uniform(0.5, 1.5, shape)
        out[name] = values.astype(np.float32)
        if name.endswith("running_var"):
            out[name.replace("running_var", "num_batches_tracked")] = np.array(5, np.int64)
    out["fc.weight"] = rng.normal(size=(1000, 64)).astype(np.float32)  # ignored
    out["fc.bias"] = np.zeros(1000, np.float32)
    return out


@pytest.fixture
def small():
    model = ResNet(**SMALL, head="none", normalize=False)
    return model, _variables(model)


def test_safetensors_file_loads_every_backbone_tensor(small, tmp_path):
    model, variables = small
    weights = _state_dict(variables)
    save_file(weights, str(tmp_path / "w.safetensors"))
    loaded = load_torchvision_resnet(variables, read_weights(tmp_path / "w.safetensors"))
    kernel = loaded["params"]["stage1_block0"]["Conv_1"]["kernel"]  # [kh, kw, I, O]
    np.testing.assert_array_equal(kernel[2, 0, 1, 3], weights["layer2.0.conv2.weight"][3, 1, 2, 0])
    np.testing.assert_array_equal(
        loaded["batch_stats"]["stage1_block0"]["BatchNorm_3"]["var"],
        weights["layer2.0.downsample.1.running_var"],
    )
    np.testing.assert_array_equal(loaded["params"]["stem_bn"]["scale"], weights["bn1.weight"])
    # Every backbone variable was replaced: none is left at its initial value.
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), loaded, dict(variables))
    assert all(jax.tree.leaves(changed))
    out = model.apply(loaded, jnp.ones((2, 16, 16, 3)))
    assert out.shape == (2, 4 * 2 * 4) and np.isfinite(out).all()


def test_head_stays_freshly_initialised(tmp_path):
    model = ResNet(**SMALL, head="hist", embedding_dim=8)
    variables = _variables(model)
    loaded = load_torchvision_resnet(variables, _state_dict(variables))
    np.testing.assert_array_equal(
        loaded["params"]["embedding"]["kernel"], variables["params"]["embedding"]["kernel"]
    )


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(WeightFileMissing, match="no file .*nothing.pth") as info:
        read_weights(tmp_path / "nothing.pth")
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_a_folder_is_named_as_such(tmp_path):
    with pytest.raises(WeightFileError, match=f"{tmp_path} is a folder; give the weight file"):
        read_weights(tmp_path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_a_wrapper_prefix_on_every_name_is_taken_off(small, tmp_path, prefix):
    """nn.DataParallel / DDP save every name under "module.", torch.compile under
    "_orig_mod.": the same weights load; a prefix on some names only is left alone."""
    _, variables = small
    weights = _state_dict(variables)
    path = tmp_path / "w.safetensors"
    save_file({prefix + name: value for name, value in weights.items()}, str(path))
    read = read_weights(path)
    assert sorted(read) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(read[name], value)
    some = {("module." if i % 2 else "") + n: v for i, (n, v) in enumerate(weights.items())}
    save_file(some, str(path))
    assert sorted(read_weights(path)) == sorted(some)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda w: w.__setitem__("layer2.0.conv2.weight", np.zeros((8, 8, 1, 1), np.float32)),
            r"tensor 'layer2.0.conv2.weight' has shape \(8, 8, 1, 1\), himl's ResNet expects "
            r"\(8, 8, 3, 3\) \(a different architecture\?\)$",
        ),
        (
            lambda w: w.__setitem__("module.conv1.weight", w.pop("conv1.weight")),
            r"no tensor 'conv1.weight' \(himl's ResNet needs shape \(4, 3, 7, 7\)\)",
        ),
        (
            lambda w: w.__setitem__("layer2.2.conv1.weight", np.zeros((8, 32, 1, 1), np.float32)),
            r"tensor 'layer2.2.conv1.weight' \(8, 32, 1, 1\) has no place",
        ),
        (
            lambda w: w.__setitem__("conv1.weight", np.zeros((4, 1, 7, 7), np.float32)),
            r"'conv1.weight' has shape \(4, 1, 7, 7\), himl's ResNet expects \(4, 3, 7, 7\) "
            r"\(weights for 1-channel images, the data has 3: read the images with 1 channels, "
            r"e.g. config.data.custom.channels=1\)",
        ),
    ],
    ids=["shape", "missing", "unexpected", "channels"],
)
def test_mismatch_names_the_first_offending_tensor(small, tmp_path, edit, message):
    _, variables = small
    weights = _state_dict(variables)
    edit(weights)
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    with pytest.raises(WeightFileError, match=message) as info:
        load_torchvision_resnet(variables, read_weights(path), str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _torch_zip(path, pickled: bytes, storages: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_naming_other_callables_is_refused_not_run(tmp_path):
    path = tmp_path / "evil.pth"
    _torch_zip(path, pickle.dumps({"conv1.weight": _Evil()}, protocol=2), {})
    with pytest.raises(
        WeightFileError, match=r"names (posix|nt)\.system, not only tensors .*would run code"
    ):
        read_weights(path)


def test_unknown_format_names_the_converter(tmp_path):
    """A pickle this reader does not know may be one torch reads: the converter is named.
    Bytes that are no pickle at all are no torch.save file either: converting would fail."""
    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": [1.0]}, protocol=2))
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    message = str(info.value)
    assert "python -m himl.models.convert_weights" in message and str(path) in message
    assert "\n" not in message
    path.write_bytes(b"\x00not a torch file at all")
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert str(info.value) == (
        f"{path}: neither a zip archive nor a pickle, so not a file torch.save wrote "
        "(damaged, or another format?)"
    )


def test_pretrained_and_freeze_bn_need_resnet50(tiny_config):
    tiny_config.model.pretrained = "/some/resnet50.pth"
    with pytest.raises(ConfigError, match=r"config.model.pretrained needs .*resnet50"):
        validate_config(tiny_config)
    tiny_config.model.pretrained = ""
    tiny_config.model.freeze_bn = True
    with pytest.raises(ConfigError, match=r"config.model.freeze_bn needs"):
        validate_config(tiny_config)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_batch_norm_trains_like_inference(freeze):
    """freeze_bn: a train-mode step leaves every running statistic as it was, and the
    train-mode output equals the eval-mode one; without it both differ."""
    images = jax.random.uniform(jax.random.key(1), (6, 16, 16, 3))
    model = ResNet(**SMALL, embedding_dim=8, freeze_bn=freeze)
    variables = _variables(model)
    # Non-trivial running statistics, as pretrained ones are.
    stats = jax.tree.map(lambda x: x + 0.3, variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}

    def loss(params):
        out, new = model.apply(
            {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out[:, 0]), (out, new["batch_stats"])

    (_, (train_out, new_stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    eval_out = model.apply(variables, images)
    same_stats = jax.tree.map(np.array_equal, new_stats, stats)
    if freeze:
        assert all(jax.tree.leaves(same_stats))
        np.testing.assert_allclose(train_out, eval_out, rtol=1e-6, atol=1e-6)
        # The BN scale and bias still learn (as in HIST after its warm-up epoch).
        assert np.abs(grads["stem_bn"]["scale"]).max() > 0
    else:
        assert not any(jax.tree.leaves(same_stats))
        assert np.abs(np.asarray(train_out) - np.asarray(eval_out)).max() > 1e-3


@pytest.mark.slow
def test_pretrained_resnet50_end_to_end(tiny_config, tmp_path):
    """A real ResNet-50 from a weight file through `train_and_evaluate`: the step-0 state
    holds the file's backbone; with the head-only warm-up (HIST's) the backbone stays the
    file's for `freeze_steps` while the head learns, then trains; with `freeze_bn` the
    running statistics stay the file's throughout."""
    from himl.train.checkpoint import Checkpointer
    from himl.train.experiment import build_experiment
    from himl.train.loop import train_and_evaluate

    config = tiny_config
    config.model.name = "resnet50"
    config.model.embedding_dim = 16
    config.model.freeze_bn = True
    config.data.batch_size, config.data.samples_per_class = 16, 8
    config.optimizer.warmup_steps = 0
    config.optimizer.lr_multipliers = {"model": 1.0, "model_embedding": 1.0, "loss": 1.0}
    config.optimizer.freeze_steps, config.optimizer.frozen_groups = 1, ("model",)
    config.train.steps, config.train.checkpoint_every, config.train.keep_checkpoints = 2, 1, 3
    config.eval.splits = ()  # ResNet-50 over 2 x 2,100 images costs minutes on 2 CPU cores
    model = ResNet(embedding_dim=16)
    shapes = jax.eval_shape(lambda: _variables(model, channels=1, side=28))  # 28 x 28 grey
    path = tmp_path / "resnet50.safetensors"
    weights = _state_dict(shapes, seed=3)
    save_file(weights, str(path))
    config.model.pretrained = str(path)

    start = build_experiment(config).initial_state()
    assert start.params["model"]["stem_conv"]["kernel"].shape == (7, 7, 1, 64)
    np.testing.assert_array_equal(
        start.params["model"]["stem_conv"]["kernel"][3, 1, 0, 5],
        weights["conv1.weight"][5, 0, 3, 1],
    )
    model_vars = {"params": start.params["model"], "batch_stats": start.batch_stats["model"]}
    reloaded = load_torchvision_resnet(model_vars, weights)  # a no-op iff start has the file's
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, reloaded, model_vars)))

    summary = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert summary["step"] == 2
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", every=1, keep=10)
    after = {step: ckpt.restore(start, step) for step in (1, 2)}
    ckpt.close()

    def leaf(state, *path):
        tree = state.params["model"]
        for key in path:
            tree = tree[key]
        return np.asarray(tree)

    kernel = ("stage2_block1", "Conv_1", "kernel")
    np.testing.assert_array_equal(leaf(after[1], *kernel), leaf(start, *kernel))  # warm-up
    assert not np.array_equal(leaf(after[2], *kernel), leaf(start, *kernel))  # then trains
    for state in after.values():
        head = ("embedding", "kernel")
        assert not np.array_equal(leaf(state, *head), leaf(start, *head))
        same = jax.tree.map(np.array_equal, state.batch_stats["model"], start.batch_stats["model"])
        assert all(jax.tree.leaves(same))  # frozen batch norm
