"""Building blocks for `configs/*.py` and the checks run on a config before any work.

Every knob a run uses appears in its config: the loss section carries one sub-config per
registered loss with that loss's keyword hyperparameters and their defaults (read from the
function's signature), so `--config.loss.name=...` switches objective and
`--config.loss.<name>.<hparam>=...` tunes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from himl.data.registry import DATASETS as DATASET_TABLE
from himl.data.registry import IN_MEMORY_SHAPES, check_manual_dir
from himl.errors import ConfigError, UserError, check_choice
from himl.losses import LOSSES, default_hparams
from himl.losses.registry import check_hparams
from himl.models.heads import HEADS
from himl.models.registry import (  # noqa: F401 (MODELS, MODEL_DTYPES re-exported)
    MODEL_DTYPES,
    MODELS,
    check_model_config,
)
from himl.train.optim import OPTIMIZERS as OPTIMIZER_TABLE
from himl.train.optim import SCHEDULES as SCHEDULE_TABLE

# The names each section accepts come from the tables that implement them.
DATASETS = tuple(DATASET_TABLE)
OPTIMIZERS = tuple(OPTIMIZER_TABLE)
SCHEDULES = tuple(SCHEDULE_TABLE)
MODEL_HEADS = HEADS


# The config fields that name a file or folder. `absolute_paths` makes them absolute when a
# command starts (himl-train, himl-eval), so config.json records where they were, not how
# they were typed: a later command run from another folder reads the same files (and the
# same prepared data_dir, instead of writing a second copy).
PATH_FIELDS = (
    "data.manual_dir",  # the downloaded dataset's folder
    "data.data_dir",  # where the array_record copy is prepared and read
    "data.class_list",  # the file of the classes to read (ImageNet subsets)
    "data.custom.source",  # the custom manifest, image-folder tree or .npz
    "model.pretrained",  # the ImageNet weight file
)


def absolute_path(value: str) -> str:
    """`value` with `~` expanded, made absolute against the working directory (symlinks and
    `..` kept as typed: the path names the place the user named)."""
    return str(Path(value).expanduser().absolute())


def absolute_paths(config) -> None:
    """Makes every non-empty `PATH_FIELDS` value of `config` (a ConfigDict or a dict)
    absolute, in place; fields a config lacks (e.g. `data.custom`) are skipped."""
    for dotted in PATH_FIELDS:
        *parents, key = dotted.split(".")
        section = config
        for parent in parents:
            section = section.get(parent) if hasattr(section, "get") else None
        if hasattr(section, "get") and isinstance(section.get(key), str) and section[key]:
            section[key] = absolute_path(section[key])


def _field(value):
    # A None default (e.g. chunk_size: None = the default blocks) is typed `object`, so that
    # `--config.x=512` is the int 512 and `--config.x=None` sets it back (the loss checks it).
    return config_dict.FieldReference(None, field_type=object) if value is None else value


def loss_config(name: str = "himulcone") -> ml_collections.ConfigDict:
    """`{name, <loss>: {hparam: default}}` for every registered loss; `name` picks one."""
    # Losses with flat labels (SupCon, triplet, proxies, HIST...) train on the labels of
    # this level ("": the dataset's class level; e.g. "group" for a coarse-level SupCon).
    cfg = ml_collections.ConfigDict({"name": name, "flat_level": ""})
    for loss_name in sorted(LOSSES):
        hparams = {k: _field(v) for k, v in default_hparams(loss_name).items()}
        cfg[loss_name] = ml_collections.ConfigDict(hparams)
    return cfg


def config_arg(arg: str, accepted, config_file: str) -> str:
    """`arg` (the `FILE.py:ARG` part of `--config`) if `accepted` lists it ("" always is);
    ConfigError listing what `config_file` accepts otherwise. For each `configs/*.py`:

        def get_config(arg=""):
            arg = config_arg(arg, ("fashion_mnist",), __file__)
    """
    if arg and arg not in accepted:
        name = Path(config_file).name
        valid = ", ".join(f"{name}:{a}" for a in accepted) or "no argument"
        raise ConfigError(f"{name} has no argument {arg!r}; it accepts {valid} (or none)")
    return arg


def validate_config(config, num_devices: int = 1) -> None:
    """Raises ConfigError (a UserError) with one line naming the key of a config that
    cannot run, before any data is loaded: each section is checked by the code that uses
    it (see SECTION_CHECKS)."""
    for check in SECTION_CHECKS:
        try:
            check(config, num_devices=num_devices)
        except UserError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(str(err)) from err


def _check_top(config, **_) -> None:
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"config.seed must be an int >= 0, got {config.seed!r}")


def _check_data(config, *, num_devices: int) -> None:
    from himl.data.defaults import data_config
    from himl.data.sampling import check_data_config

    check_choice(config.data.name, DATASETS, "config.data.name")
    check_data_config(config.data, num_devices=num_devices)
    shape = IN_MEMORY_SHAPES.get(config.data.name)
    # An in-memory dataset is never resized: another image_size would be ignored without a
    # word. The untouched default (224, what every saved run of these datasets holds) is
    # accepted.
    if shape and config.data.image_size not in (shape[0], data_config().image_size):
        raise ConfigError(
            f"config.data.image_size={config.data.image_size}: the {config.data.name} dataset "
            f"is held in memory at {shape[0]} x {shape[1]} x {shape[2]} and is not resized"
        )
    data_dir = config.data.get("data_dir", "")
    if data_dir and Path(data_dir).expanduser().is_file():
        raise ConfigError(
            f"config.data.data_dir={data_dir} is a file; give a folder (the array_record copy "
            "is written in it)"
        )
    if config.data.name == "fashion_mnist" and not config.data.manual_dir:
        raise ConfigError(
            "config.data.manual_dir must point at the Fashion-MNIST IDX files for "
            "data.name=fashion_mnist (e.g. --config.data.manual_dir=../shared/data/fashion-mnist)"
        )
    if config.data.name == "custom" and not config.data.get("custom", {}).get("source", ""):
        raise ConfigError(
            "config.data.custom.source must point at your manifest, image-folder tree or .npz: "
            "--config=configs/custom.py --config.data.custom.source=PATH"
        )
    if config.data.name == "custom":
        from himl.data.custom import check_custom_config

        check_custom_config(config.data.custom)
    check_manual_dir(config.data)


def _check_model(config, **_) -> None:
    check_model_config(config.model)


def _check_loss(config, **_) -> None:
    """The loss name, its hyperparameters (by the loss's own checks) and whether the
    batches can hold the positives it needs."""
    from himl.data.sampling import SAMPLERS, class_positives

    name = config.loss.name
    check_choice(name, tuple(sorted(LOSSES)), "config.loss.name")
    expected = set(default_hparams(name))
    given = set(config.loss[name].keys())
    if given != expected:
        raise ConfigError(
            f"config.loss.{name} has keys {sorted(given)}, the loss takes {sorted(expected)}"
        )
    hparams = config.loss[name].to_dict()
    try:
        check_hparams(name, hparams, embedding_dim=8, num_views=config.data.num_views)
    except (ValueError, TypeError) as err:
        # The hyperparameter the loss's message names (a whole word: "margin" is not in
        # "triplet_margin"), for a message naming the config key.
        named = (k for k in hparams if re.search(rf"(?<!\w){k}(?!\w)", str(err)))
        key = next(named, None)
        where = f"config.loss.{name}" + (f".{key}" if key else "")
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from err
    flat_level = config.loss.get("flat_level", "")
    if flat_level and LOSSES[name].labels != "flat":
        raise ConfigError(
            f"config.loss.flat_level={flat_level!r} picks the label level of a loss with flat "
            f"labels; {name} takes the whole hierarchy (leave flat_level empty)"
        )
    if LOSSES[name].needs_positives and class_positives(config.data) < 1:
        keys = (*SAMPLERS[config.data.sampler].positive_keys, "num_views")
        settings = " and ".join(f"config.data.{key}={config.data[key]}" for key in keys)
        raise ConfigError(
            f"config.loss.name={name} needs two samples of a class in a batch, but "
            f"{settings} give every sample none (config.data.sampler="
            f"{config.data.sampler}): the loss would be constant; raise either to 2"
        )


def unselected_loss_changes(config) -> list[str]:
    """One note per loss that `config.loss.name` does not select whose section differs
    from its defaults: only the selected loss's section is read, so those values train
    nothing (the command line refuses such overrides; a config edited in Python gets
    this note)."""
    notes = []
    for name in sorted(LOSSES):
        if name == config.loss.name or name not in config.loss:
            continue
        section, defaults = config.loss[name], default_hparams(name)
        changed = [
            f"{k}={section[k]}" for k in defaults if k in section and section[k] != defaults[k]
        ]
        if changed:
            notes.append(
                f"config.loss.{name} sets {', '.join(changed)}, but config.loss.name="
                f"{config.loss.name} trains with config.loss.{config.loss.name} only"
            )
    return notes


def config_notes(config) -> list[str]:
    """Notes a run prints before it starts: settings that are valid but do less than they
    seem to (`unselected_loss_changes`; a warm-up as long as the run, which
    `himl.train.optim.schedule` cuts to leave one step for the schedule)."""
    notes = unselected_loss_changes(config)
    warmup, steps = config.optimizer.get("warmup_steps", 0), config.train.steps
    if warmup >= steps > 1:  # one step runs at the peak rate: nothing to say
        notes.append(
            f"config.optimizer.warmup_steps={warmup} >= config.train.steps={steps}: the "
            f"learning rate warms up over {steps - 1} step{'s' * (steps != 2)} and reaches "
            "its peak at the last"
        )
    return notes


def _check_optimizer(config, **_) -> None:
    opt = config.optimizer
    check_choice(opt.name, OPTIMIZERS, "config.optimizer.name")
    check_choice(opt.schedule, SCHEDULES, "config.optimizer.schedule")
    if not opt.learning_rate > 0:  # also catches NaN
        raise ConfigError(f"config.optimizer.learning_rate must be > 0, got {opt.learning_rate}")
    for key in ("weight_decay", "warmup_steps", "decay_every"):
        if key in opt and not opt[key] >= 0:
            raise ConfigError(f"config.optimizer.{key} must be >= 0, got {opt[key]}")
    if opt.schedule == "step" and not opt.get("decay_every", 0):  # else a constant rate
        raise ConfigError(
            "config.optimizer.schedule=step needs config.optimizer.decay_every > 0 (the steps "
            "between decays)"
        )
    if "decay_factor" in opt and not 0 < opt.decay_factor <= 1:
        raise ConfigError(
            f"config.optimizer.decay_factor must be in (0, 1], got {opt.decay_factor}"
        )
    _validate_lr_groups(opt)


def _check_train(config, **_) -> None:
    train = config.train
    if train.steps < 1:  # 0 would evaluate the untrained model and call it "trained"
        raise ConfigError(
            f"config.train.steps must be >= 1, got {train.steps} (the untrained model is "
            "evaluated at the start: config.eval.at_start)"
        )
    for key in ("log_every", "checkpoint_every"):
        if not train[key] >= 1:
            raise ConfigError(f"config.train.{key} must be >= 1, got {train[key]}")
    if not train.keep_checkpoints >= 1:
        raise ConfigError(
            f"config.train.keep_checkpoints must be >= 1 (the newest checkpoints to keep), "
            f"got {train.keep_checkpoints}"
        )


def _check_eval(config, **_) -> None:
    from himl.eval.evaluators import check_eval_config

    check_eval_config(config.eval)


# One check per config section, in the order a user reads a config; a new field gets its
# check in its section's function (or the module that function calls).
SECTION_CHECKS = (
    _check_top,
    _check_data,
    _check_model,
    _check_loss,
    _check_optimizer,
    _check_train,
    _check_eval,
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
