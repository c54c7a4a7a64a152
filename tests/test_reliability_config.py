"""Catalogue of config values a run cannot use: each fails in one line naming its key,
before any data is loaded and before the work directory is touched (issue 13)."""

import importlib
import pathlib
import re

import pytest

from himl.config_lib import config_arg, validate_config
from himl.errors import ConfigError

REPO = pathlib.Path(__file__).parents[1]

# (dotted key, bad value, text the one-line error must contain)
BAD_VALUES = [
    ("seed", -1, "config.seed"),
    ("data.batch_size", 0, "config.data.batch_size"),
    ("data.batch_size", 60, "config.data.batch_size"),  # not a multiple of 16
    ("data.samples_per_class", 0, "config.data.batch_size"),
    ("data.num_views", 0, "config.data.num_views"),
    ("data.sampler", "random", "config.data.sampler"),
    ("data.augmentation", "flip", "config.data.augmentation"),
    ("data.image_size", 0, "config.data.image_size"),
    ("data.num_workers", -1, "config.data.num_workers"),
    ("data.eval_crop", 0.0, "config.data.eval_crop"),
    ("data.eval_crop", 1.5, "config.data.eval_crop"),
    ("data.color_jitter", -0.1, "config.data.color_jitter"),
    ("data.val_fraction", 1.0, "config.data.val_fraction"),
    ("data.crop_scale", (0.8, 0.2), "config.data.crop_scale"),
    ("data.crop_ratio", (0.0, 1.0), "config.data.crop_ratio"),
    ("data.name", "mnist", "config.data.name"),
    ("model.name", "vit", "config.model.name"),
    ("model.head", "mlp", "config.model.head"),
    ("model.embedding_dim", 0, "config.model.embedding_dim"),
    ("model.widths", (), "config.model.widths"),
    ("model.widths", (8, 0), "config.model.widths"),
    ("loss.name", "supcontrast", "config.loss.name"),
    ("loss.himulcone.temperature", 0.0, "config.loss.himulcone.temperature"),
    ("loss.himulcone.base_temperature", -1.0, "config.loss.himulcone.base_temperature"),
    ("loss.himulcone.mode", "papers", "config.loss.himulcone.mode"),
    ("loss.himulcone.level_penalty", "cubic", "config.loss.himulcone.level_penalty"),
    ("optimizer.name", "lamb", "config.optimizer.name"),
    ("optimizer.schedule", "linear", "config.optimizer.schedule"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate"),
    ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate"),
    ("optimizer.weight_decay", -1e-4, "config.optimizer.weight_decay"),
    ("optimizer.warmup_steps", -1, "config.optimizer.warmup_steps"),
    ("optimizer.decay_factor", 0.0, "config.optimizer.decay_factor"),
    ("optimizer.freeze_steps", -1, "config.optimizer.freeze_steps"),
    ("train.steps", -1, "config.train.steps"),
    ("train.steps", 0, "config.train.steps must be >= 1, got 0 (the untrained model is"),
    ("optimizer.schedule", "step", "config.optimizer.schedule=step needs config.optimizer"),
    ("train.log_every", 0, "config.train.log_every"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints"),
    ("eval.ks", (0,), "config.eval.ks"),
    ("eval.ks", (), "config.eval.ks"),
    # in memory at 28 x 28 x 1: another size was ignored without a word
    ("data.image_size", 32, "config.data.image_size=32: the embedded dataset is held in memory"),
    ("eval.ks", (1, 1, 5), "config.eval.ks"),  # a repeat would count its Recall@K twice
    ("eval.metric", "manhattan", "config.eval.metric"),
    ("eval.batch_size", 0, "config.eval.batch_size"),
    ("eval.block_size", 0, "config.eval.block_size"),
    ("eval.max_r", -1, "config.eval.max_r must be >= 0 (0: no cap on R)"),
    ("eval.query_gallery", ("query",), "config.eval.query_gallery"),
    # A file (here this one) would end in a traceback from the store's lock file.
    ("data.data_dir", __file__, f"config.data.data_dir={__file__} is a file; give a folder"),
]

# (loss name, hyperparameter, bad value): checked by the loss itself, traced abstractly.
BAD_HPARAMS = [
    ("supcon", "temperature", 0.0),
    ("ntxent", "temperature", 0.0),
    ("himulcon", "temperature", -0.1),
    ("hicone", "mode", "other"),
    ("himulcon", "level_penalty", "linear"),
    ("normalized_softmax", "temperature", 0.0),
    ("proxy_anchor", "alpha", 0.0),
    ("proxy_nca", "softmax_scale", 0.0),
    ("multi_similarity", "alpha", 0.0),
    ("multi_similarity", "beta", -1.0),
    ("hist", "tau", 0.0),
    ("hist", "hgnn_hidden", 0),
    ("triplet_margin", "mining", "hardest"),
    ("contrastive", "distance", "manhattan"),
    # Not finite, or out of range: trained on NaN (after the compile, blaming the learning
    # rate) or, for an infinite temperature, on a constant loss with zero gradients.
    ("supcon", "temperature", float("inf")),
    ("proxy_anchor", "alpha", float("inf")),
    ("proxy_anchor", "margin", float("nan")),
    ("multi_similarity", "base", float("nan")),
    ("triplet_margin", "margin", float("inf")),
    ("hist", "alpha", -100.0),
    ("hist", "lambda_s", float("nan")),
    ("hist", "lambda_s", -1.0),
]


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    for part in parents:
        config = config[part]
    with config.ignore_type():
        config[leaf] = value


def _default():
    """The main job's config with m-per-class batches (whose sizes these checks are about)."""
    from himl.configs import default

    config = default.get_config()
    config.data.sampler = "m_per_class"
    return config


def _one_line_error(config, num_devices=8):
    with pytest.raises(ConfigError) as err:
        validate_config(config, num_devices=num_devices)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key,value,expected", BAD_VALUES, ids=lambda x: str(x))
def test_bad_value_is_one_line_naming_the_key(key, value, expected):
    config = _default()
    _set(config, key, value)
    assert expected in _one_line_error(config)


@pytest.mark.parametrize("loss,hparam,value", BAD_HPARAMS, ids=str)
def test_bad_loss_hyperparameter_is_caught_by_the_loss_itself(loss, hparam, value):
    config = _default()
    config.loss.name = loss
    if loss in ("hist", "proxy_anchor", "proxy_nca", "normalized_softmax"):
        pass  # flat labels, no positives needed
    _set(config, f"loss.{loss}.{hparam}", value)
    assert f"config.loss.{loss}.{hparam}" in _one_line_error(config)


def test_every_default_loss_config_is_valid():
    from himl.losses import LOSSES

    for name in LOSSES:
        config = _default()
        config.loss.name = name
        validate_config(config, num_devices=8)


@pytest.mark.parametrize("loss", ["supcon", "himulcone", "triplet_margin", "contrastive"])
def test_batch_without_positives_is_refused_for_losses_that_need_them(loss):
    config = _default()
    config.loss.name = loss
    config.data.samples_per_class, config.data.num_views, config.data.batch_size = 1, 1, 8
    message = _one_line_error(config)
    assert f"config.loss.name={loss}" in message and "samples_per_class=1" in message
    # Either a second sample of the class or a second view gives every sample a positive.
    config.data.num_views = 2
    validate_config(config, num_devices=8)
    config.data.num_views, config.data.samples_per_class, config.data.batch_size = 1, 2, 8
    validate_config(config, num_devices=8)


@pytest.mark.parametrize("loss", ["proxy_anchor", "proxy_nca", "normalized_softmax", "hist"])
def test_proxy_losses_need_no_positives(loss):
    config = _default()
    config.loss.name = loss
    config.data.samples_per_class, config.data.num_views, config.data.batch_size = 1, 1, 8
    validate_config(config, num_devices=8)


def test_hierarchical_sampler_always_has_a_class_partner():
    """...when the batch holds two samples; a batch of one is refused naming the keys
    this sampler reads (not samples_per_class, which it ignores)."""
    config = _default()
    config.data.sampler, config.data.num_views = "hierarchical", 1
    validate_config(config, num_devices=8)
    config.data.batch_size = 1
    message = _one_line_error(config, num_devices=1)
    assert "config.data.batch_size=1 and config.data.num_views=1 give every sample" in message
    assert "samples_per_class" not in message


def _config_modules():
    names = sorted(p.stem for p in (REPO / "configs").glob("*.py"))
    shared = {"benchmark", "__init__"}  # settings only: get_config refuses any use
    return [importlib.import_module(f"himl.configs.{n}") for n in names if n not in shared]


@pytest.mark.parametrize("module", _config_modules(), ids=lambda m: m.__name__)
def test_every_config_rejects_an_unknown_arg_listing_what_it_accepts(module):
    with pytest.raises(ValueError, match="fashion_mnsit.*accepts") as err:
        module.get_config("fashion_mnsit")
    assert "\n" not in str(err.value)
    module.get_config("")
    if isinstance(err.value, ConfigError):  # the shared helper: every listed arg works
        listed = str(err.value).split("it accepts ")[1].split(" (or none)")[0]
        for item in listed.split(", "):
            module.get_config(item.split(":", 1)[1])


def test_config_arg_helper():
    assert config_arg("", ("a",), "x.py") == "" and config_arg("a", ("a",), "x.py") == "a"
    with pytest.raises(ConfigError, match=r"x.py has no argument 'b'; it accepts x.py:a"):
        config_arg("b", ("a",), "/some/where/x.py")
    with pytest.raises(ConfigError, match="it accepts no argument"):
        config_arg("b", (), "x.py")


def test_bad_value_fails_before_data_or_workdir(monkeypatch, tmp_path):
    """train_and_evaluate checks values before loading data and before touching workdir."""
    import himl.train.experiment as experiment
    from himl.train.loop import train_and_evaluate

    def no_data(_):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(experiment, "load_dataset", no_data)
    for key, value, expected in BAD_VALUES:
        config = _default()
        _set(config, key, value)
        with pytest.raises(ConfigError, match=re.escape(expected)):
            train_and_evaluate(config, tmp_path / "w", progress=False)
        assert not (tmp_path / "w").exists()
