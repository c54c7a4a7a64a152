"""Every config in configs/ builds and passes validation (a user's first contact)."""

import importlib
import pathlib

import pytest

from himl.config_lib import ConfigError, config_notes, unselected_loss_changes, validate_config

CONFIGS = sorted(
    p.stem
    for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
    if p.stem not in ("__init__", "benchmark")
)
VARIANTS = {"default": ["", "fashion_mnist"], "hist": ["", "cub", "cars", "sop"]}


@pytest.mark.parametrize(
    "name,arg", [(name, arg) for name in CONFIGS for arg in VARIANTS.get(name, [""])]
)
def test_config_validates(name, arg):
    config = importlib.import_module(f"himl.configs.{name}").get_config(arg)
    if config.data.name == "custom":
        with pytest.raises(ConfigError, match="config.data.custom.source must point"):
            validate_config(config)
        config.data.custom.source = "/data/somewhere.csv"
    elif config.data.name != "embedded":
        with pytest.raises(ConfigError, match="manual_dir"):
            validate_config(config)
        config.data.manual_dir = "/data/somewhere"
    validate_config(config)
    assert unselected_loss_changes(config) == []  # a recipe sets only the loss it trains


def test_unknown_loss_and_bad_batch_are_named():
    from himl.configs import default

    config = default.get_config()
    config.loss.name = "supcontrast"
    with pytest.raises(ConfigError, match="unknown config.loss.name 'supcontrast'; valid: "):
        validate_config(config)
    config = default.get_config()
    config.data.batch_size = 60
    validate_config(config)  # the default sampler (hierarchical) ignores samples_per_class
    config.data.sampler = "m_per_class"
    with pytest.raises(ConfigError, match="samples_per_class"):
        validate_config(config)
    config = default.get_config()
    with pytest.raises(ConfigError, match="divide evenly over 7 devices"):
        validate_config(config, num_devices=7)


def test_values_set_for_an_unselected_loss_are_noted():
    """Only the selected loss's section is read: values set in another (from Python; the
    command line refuses them) get one note each, naming the loss that does train."""
    config = importlib.import_module("himl.configs.default").get_config()
    config.loss.supcon.temperature = 0.2
    config.loss.triplet_margin.margin, config.loss.himulcone.temperature = 0.3, 0.5
    assert unselected_loss_changes(config) == [
        "config.loss.supcon sets temperature=0.2, but config.loss.name=himulcone trains "
        "with config.loss.himulcone only",
        "config.loss.triplet_margin sets margin=0.3, but config.loss.name=himulcone trains "
        "with config.loss.himulcone only",
    ]
    config.loss.name = "supcon"
    assert [n.split(" sets ")[0] for n in unselected_loss_changes(config)] == [
        "config.loss.himulcone", "config.loss.triplet_margin"
    ]  # fmt: skip


def test_a_warm_up_as_long_as_the_run_is_noted():
    config = importlib.import_module("himl.configs.default").get_config()
    assert config_notes(config) == []
    config.train.steps = config.optimizer.warmup_steps = 30
    assert config_notes(config) == [
        "config.optimizer.warmup_steps=30 >= config.train.steps=30: the learning rate warms "
        "up over 29 steps and reaches its peak at the last"
    ]
