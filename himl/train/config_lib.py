"""Building blocks for `configs/*.py` and the checks run on a config before any work.

Every knob a run uses appears in its config: the loss section carries one sub-config per
registered loss with that loss's keyword hyperparameters and their defaults (read from the
function's signature), so `--config.loss.name=...` switches objective and
`--config.loss.<name>.<hparam>=...` tunes it.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from himl.errors import UserError
from himl.losses import LOSSES, default_hparams
from himl.models.heads import HEADS

DATASETS = (
    "embedded",
    "fashion_mnist",
    "custom",
    "cub",
    "cars",
    "sop",
    "inshop",
    "imagenet",
    "omniglot",
)
MODELS = ("small_cnn", "resnet50")
MODEL_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adam_l2", "adamw", "sgd")
MODEL_HEADS = HEADS
SCHEDULES = ("constant", "cosine", "step")


class ConfigError(UserError, ValueError):
    """A config that names something that does not exist or cannot work."""


def _field(value):
    # A None default still needs a type so that `--config.x=3` can override it.
    return config_dict.placeholder(int) if value is None else value


def loss_config(name: str = "himulcone") -> ml_collections.ConfigDict:
    """`{name, <loss>: {hparam: default}}` for every registered loss; `name` picks one."""
    cfg = ml_collections.ConfigDict({"name": name})
    for loss_name in sorted(LOSSES):
        hparams = {k: _field(v) for k, v in default_hparams(loss_name).items()}
        cfg[loss_name] = ml_collections.ConfigDict(hparams)
    return cfg


def _choose(value, valid, what):
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def validate_config(config, num_devices: int = 1) -> None:
    """Raises ConfigError with one clear line for a config that cannot run."""
    _choose(config.loss.name, tuple(sorted(LOSSES)), "config.loss.name")
    expected = set(default_hparams(config.loss.name))
    given = set(config.loss[config.loss.name].keys())
    if given != expected:
        raise ConfigError(
            f"config.loss.{config.loss.name} has keys {sorted(given)}, the loss takes "
            f"{sorted(expected)}"
        )
    _choose(config.data.name, DATASETS, "config.data.name")
    _choose(config.model.name, MODELS, "config.model.name")
    _choose(config.optimizer.name, OPTIMIZERS, "config.optimizer.name")
    _choose(config.optimizer.schedule, SCHEDULES, "config.optimizer.schedule")
    _choose(config.model.head, MODEL_HEADS, "config.model.head")
    _validate_backbone_options(config.model)
    _choose(config.model.get("dtype", "float32"), MODEL_DTYPES, "config.model.dtype")
    _validate_lr_groups(config.optimizer)
    batch, per_class = config.data.batch_size, config.data.samples_per_class
    if batch <= 0 or per_class <= 0 or batch % per_class:
        raise ConfigError(
            f"config.data.batch_size ({batch}) must be a positive multiple of "
            f"config.data.samples_per_class ({per_class})"
        )
    if batch % num_devices:
        raise ConfigError(
            f"config.data.batch_size ({batch}) must divide evenly over {num_devices} devices"
        )
    if config.data.num_views < 1:
        raise ConfigError(f"config.data.num_views must be >= 1, got {config.data.num_views}")
    if config.train.steps < 0:
        raise ConfigError(f"config.train.steps must be >= 0, got {config.train.steps}")
    if config.data.name == "fashion_mnist" and not config.data.manual_dir:
        raise ConfigError(
            "config.data.manual_dir must point at the Fashion-MNIST IDX files for "
            "data.name=fashion_mnist (e.g. --config.data.manual_dir=../shared/data/fashion-mnist)"
        )
    if config.data.name == "custom" and "custom" not in config.data:
        raise ConfigError(
            "config.data.name=custom needs the config.data.custom section: use "
            "--config=configs/custom.py --config.data.custom.source=PATH"
        )
    if config.data.name not in ("embedded", "fashion_mnist", "custom") and not (
        config.data.manual_dir
    ):
        raise ConfigError(
            f"config.data.manual_dir must point at the downloaded {config.data.name} files "
            f"(--config.data.manual_dir=PATH); nothing is downloaded"
        )


def _validate_backbone_options(model) -> None:
    """`pretrained` (torchvision layout) and `freeze_bn` exist for resnet50 only."""
    for key in ("pretrained", "freeze_bn"):
        if model.get(key, None) and model.name != "resnet50":
            raise ConfigError(
                f"config.model.{key} needs config.model.name=resnet50, not {model.name!r}"
            )


def _validate_lr_groups(opt) -> None:
    if "loss_lr_multiplier" in opt:
        raise ConfigError(
            "config.optimizer.loss_lr_multiplier was replaced by "
            "config.optimizer.lr_multipliers.loss (see himl/train/optim.py)"
        )
    multipliers = opt.get("lr_multipliers", None)
    groups = {"model", "loss"} | set(multipliers.keys() if multipliers is not None else ())
    for key, value in multipliers.items() if multipliers is not None else ():
        if not isinstance(value, int | float) or value < 0:
            raise ConfigError(
                f"config.optimizer.lr_multipliers.{key} must be a number >= 0, got {value!r}"
            )
    if opt.get("freeze_steps", 0) < 0:
        raise ConfigError(f"config.optimizer.freeze_steps must be >= 0, got {opt.freeze_steps}")
    for group in opt.get("frozen_groups", ()) or ():
        if group not in groups:
            raise ConfigError(
                f"config.optimizer.frozen_groups names {group!r}, not a group of "
                f"config.optimizer.lr_multipliers ({', '.join(sorted(groups))})"
            )
