"""Proof that a torchvision ResNet-50 weight file gives himl's ResNet-50 PyTorch's features.

A PyTorch ResNet-50 with torchvision's module names (tests/torch_resnet.py) gets random
weights, random batch-norm running statistics included; its state dict is saved as a
`.pth` (torch.save's zip format and its legacy format) and as `.safetensors`, loaded into
himl, and the 2048-d pooled features of both networks are compared in eval mode. PyTorch
is a test-only dependency (requirements.txt): without it this module is skipped.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402
from torch_resnet import ResNet50, randomize  # noqa: E402

from himl.models.pretrained import load_torchvision_resnet  # noqa: E402
from himl.models.resnet import ResNet  # noqa: E402
from himl.models.weight_files import WeightFileError, read_weights  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIDE = 96  # any side works; 96 keeps the CPU time small (final feature map 3 x 3)


def _torch_features(model, images: np.ndarray) -> np.ndarray:
    """torchvision's preprocessing (ImageNet mean / std on [0, 1] RGB), NCHW, eval mode."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        return model.features(x).numpy()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(weight files by format, images [4, 96, 96, 3] in [0, 1], PyTorch features [4, 2048])."""
    folder = tmp_path_factory.mktemp("weights")
    model = randomize(ResNet50(), seed=0)
    state = model.state_dict()
    files = {
        "pth": folder / "resnet50.pth",
        "pth_legacy": folder / "resnet50_legacy.pth",
        "safetensors": folder / "resnet50.safetensors",
    }
    torch.save(state, files["pth"])
    torch.save(state, files["pth_legacy"], _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]))
    np.savez(folder / "expected.npz", **{k: v.numpy() for k, v in state.items()})
    images = np.random.default_rng(0).uniform(size=(4, SIDE, SIDE, 3)).astype(np.float32)
    return files, images, _torch_features(model, images)


@pytest.fixture(scope="module")
def himl_features():
    """`features(weights) -> [N, 2048]`: himl's ResNet-50 ("none" head: the pooled backbone
    features, unnormalised) with `weights` loaded, in eval mode, jitted once."""
    model = ResNet(head="none", normalize=False)
    image = jax.ShapeDtypeStruct((1, SIDE, SIDE, 3), jnp.float32)  # the file replaces all
    variables = model.lazy_init(jax.random.key(0), image, train=False)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

    def features(weights, images):
        return np.asarray(apply(load_torchvision_resnet(variables, weights), images))

    return features


def _max_relative_difference(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| over the whole feature matrix."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("fmt", ["pth", "pth_legacy", "safetensors"])
def test_same_weights_same_features_as_pytorch(reference, himl_features, fmt):
    files, images, expected = reference
    ours = himl_features(read_weights(files[fmt]), images)
    assert ours.shape == expected.shape == (4, 2048)
    assert _max_relative_difference(ours, expected) < 1e-4
    # Per feature too, beyond the largest ones (values far below the scale are noise).
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


def test_a_wrong_mapping_would_be_caught(reference, himl_features):
    """The check can fail: two same-shape tensors swapped (the block's last BN and its
    shortcut BN, the kind of slip a hand-written name table makes) change the features."""
    files, images, expected = reference
    weights = dict(read_weights(files["safetensors"]))
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        a, b = f"layer3.0.bn3.{leaf}", f"layer3.0.downsample.1.{leaf}"
        weights[a], weights[b] = weights[b], weights[a]
    assert _max_relative_difference(himl_features(weights, images), expected) > 1e-2


def test_pth_is_read_without_pytorch(reference):
    """Both .pth formats read in a process where `import torch` fails, tensor for tensor."""
    files, _, _ = reference
    folder = files["pth"].parent
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from himl.models.weight_files import read_weights\n"
        f"expected = np.load({str(folder / 'expected.npz')!r})\n"
        f"for path in ({str(files['pth'])!r}, {str(files['pth_legacy'])!r}):\n"
        "    got = read_weights(path)\n"
        "    assert sorted(got) == sorted(expected.files), path\n"
        "    for k in expected.files:\n"
        "        assert got[k].dtype == expected[k].dtype, k\n"
        "        np.testing.assert_array_equal(got[k], expected[k])\n"
        "print(len(expected.files))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "320"  # 53 convs + 53 BNs x 5 + fc weight and bias


def test_views_and_dtypes_in_a_pth(tmp_path):
    """Non-contiguous views sharing one storage, half and bfloat16 tensors."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "t": base.t(),
        "slice": base[1:, 2:5],
        "half": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "bf16": torch.tensor([0.25, 3.0], dtype=torch.bfloat16),
        "count": torch.tensor(7),
    }
    torch.save(state, tmp_path / "views.pth")
    got = read_weights(tmp_path / "views.pth")
    for name, tensor in state.items():
        np.testing.assert_array_equal(got[name].astype(np.float64), tensor.double().numpy())


def test_converter_writes_safetensors(reference, tmp_path):
    files, _, _ = reference
    out = tmp_path / "converted.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "himl.models.convert_weights", str(files["pth_legacy"]), str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    original, converted = read_weights(files["pth"]), read_weights(out)
    assert sorted(original) == sorted(converted)
    for name in original:
        np.testing.assert_array_equal(original[name], converted[name])


def test_a_whole_torch_module_is_refused(tmp_path):
    """torch.save(model) pickles the module's classes: not a state dict, not executed."""
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    # Converting would refuse it too (test below): the message says what does work.
    assert str(info.value) == (
        f"{path}: names torch.nn.modules.linear.Linear, not only tensors (a whole "
        "torch.save(model)?); loading it would run code from the file. If you trust it, load "
        "it where that class is importable and save model.state_dict() instead"
    )


def _small_state() -> dict:
    return {
        "a.weight": torch.arange(600, dtype=torch.float32).reshape(20, 30),
        "a.bias": torch.ones(20),
    }


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.05, 0.6, 0.98])
def test_a_truncated_pth_is_named_truncated(tmp_path, legacy, keep):
    """An interrupted download (cut in the storages, or near the end) is one line saying so."""
    whole = tmp_path / "whole.pth"
    torch.save(_small_state(), whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    message = str(info.value)
    assert "truncated" in message and str(path) in message and "\n" not in message
    assert "convert_weights" not in message  # converting cannot help


def test_a_zip_pth_missing_a_storage_or_bytes_is_named_truncated(tmp_path):
    import zipfile

    whole = tmp_path / "whole.pth"
    torch.save(_small_state(), whole)
    with zipfile.ZipFile(whole) as z:
        members = {n: z.read(n) for n in z.namelist()}
    storages = sorted(n for n in members if "/data/" in n)
    assert len(storages) == 2

    def rewrite(name, edit):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as z:
            for n, raw in members.items():
                if (raw := edit(n, raw)) is not None:
                    z.writestr(n, raw)
        return path

    missing = rewrite("missing.pth", lambda n, raw: None if n == storages[0] else raw)
    with pytest.raises(WeightFileError, match=rf"truncated.*no member {storages[0]}"):
        read_weights(missing)
    short = rewrite("short.pth", lambda n, raw: raw[:-4] if n == storages[0] else raw)
    with pytest.raises(WeightFileError, match=r"truncated.*has \d+ of its \d+ bytes"):
        read_weights(short)


def test_a_checkpoint_wrapping_the_state_dict_is_unwrapped(tmp_path):
    """{"model": state dict, "epoch": 3} reads as the state dict, as convert_weights does."""
    state = _small_state()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 3}, path)
    got = read_weights(path)
    assert sorted(got) == sorted(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(got[name], tensor.numpy())
    out = tmp_path / "converted.safetensors"
    from himl.models.convert_weights import convert

    assert convert(str(path), str(out)) == len(state)
    assert sorted(read_weights(out)) == sorted(state)


def test_a_dict_without_tensors_names_its_keys(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"net": _small_state(), "epoch": 3}, path)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "no tensors at the top level" in str(info.value)
    assert str(info.value).endswith("its keys: net, epoch")


def test_converter_reports_a_missing_file_and_a_whole_module_in_one_line(tmp_path, capsys):
    from himl.models.convert_weights import main

    module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 3), module)
    out = tmp_path / "out.safetensors"
    for src, dst, expected in [
        (tmp_path / "absent.pth", out, f"no file {tmp_path / 'absent.pth'}"),
        (module, out, "holds pickled Python objects, not only tensors (it names torch.nn."),
        (module, tmp_path / "out.pth", "out.pth: the output is a .safetensors file, name it"),
        (module, tmp_path / "no" / "o.safetensors", f"no folder {tmp_path / 'no'} to write it"),
    ]:
        assert main([str(src), str(dst)]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "out.pth").exists()


def test_converter_expands_the_home_folder(tmp_path, monkeypatch):
    from himl.models.convert_weights import main

    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save({"module.a.weight": torch.ones(2, 3)}, tmp_path / "dp.pth")
    assert main(["~/dp.pth", "~/dp.safetensors"]) == 0
    assert list(read_weights(tmp_path / "dp.safetensors")) == ["a.weight"]


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path, monkeypatch):
    """A pickle whose tensor needs more elements than its storage holds: never read past it."""
    import io
    import pickle
    import zipfile

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled here")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    monkeypatch.setattr(torch._utils, "_rebuild_tensor_v2", _rebuild_tensor_v2)

    class Storage:  # persistent id of a 4-element float32 storage
        pass

    class Tensor:
        def __reduce__(self):
            return (_rebuild_tensor_v2, (Storage(), 0, (10,), (1,)))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return (
                ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, Storage) else None
            )

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    path = tmp_path / "reach.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    with pytest.raises(WeightFileError, match="storage 0 holds 4 elements, a tensor needs 10"):
        read_weights(path)
