"""Every config in configs/ builds and passes validation (a user's first contact)."""

import importlib
import pathlib

import pytest

from himl.config_lib import ConfigError, validate_config

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
