"""A `himl-train` work directory as the tools that read it see it (himl-eval, himl-embed).

    config = load_run_config(workdir)                    # its config.json (+ newer fields)
    variables, step = restore_model_variables(model, input_shape, workdir, step=None)

A command's `--config=himl/runs.py:WORKDIR` is that config as a config file (`get_config`),
so that `--config.x=y` overrides its fields (himl-eval's default config).

A work directory holds `config.json`, `input.json` (the `(H, W, C)` and crop fraction of the
network's input, `read_input_spec`) and `checkpoints/<step>/` (orbax). Readers need only
the embedding network, so `restore_model_variables` restores the model's parameters and
batch statistics alone: no optimizer, no loss variables, no dependence on the number of
devices the run was trained on.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from ml_collections import config_dict

from himl.errors import ConfigError, UserError


class RunError(UserError, ValueError):
    """A work directory, config file or checkpoint that cannot be read."""


def read_config_json(path: Path) -> dict | None:
    """The dict in a run's `config.json` (None when absent); one line if it is garbled."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {err.lineno} column {err.colno}" if hasattr(err, "lineno") else "its bytes"
        raise RunError(
            f"{path} is not valid JSON ({err.__class__.__name__} at {where}): restore it, or "
            "use another --workdir"
        ) from err
    if not isinstance(saved, dict):
        raise RunError(f"{path} holds a {type(saved).__name__}, not a config object")
    return saved


INPUT_FILE = "input.json"


def write_input_spec(workdir: Path, shape, crop_fraction: float) -> None:
    """Records the network's input in `workdir/input.json`, so that embedding new images
    needs the work directory alone (not the training data, e.g. an `.npz` since moved)."""
    path = Path(workdir) / INPUT_FILE
    tmp = path.with_suffix(".json.tmp")
    spec = {"shape": [int(n) for n in shape], "crop_fraction": float(crop_fraction)}
    tmp.write_text(json.dumps(spec, indent=2))
    tmp.replace(path)  # atomic


def read_input_spec(workdir: Path) -> tuple[tuple[int, int, int], float] | None:
    """`((H, W, C), crop_fraction)` recorded by `write_input_spec`; None for a run made
    before it was recorded. One line if the file is garbled."""
    path = Path(workdir) / INPUT_FILE
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text())
        shape, crop = tuple(spec["shape"]), spec["crop_fraction"]
        valid = len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)
        if not (valid and isinstance(crop, int | float) and 0 < crop <= 1):
            raise ValueError(f"shape {shape}, crop_fraction {crop}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise RunError(
            f"{path} is not a valid input record ({err.__class__.__name__}: {err}); it should "
            'be {"shape": [H, W, C], "crop_fraction": f}'
        ) from None
    return shape, float(crop)


# Config fields whose keys the user chooses (a map, not a schema): a saved run's map is
# complete as it is, e.g. In-Shop's `{"model": 1.0, "model/stem": 0.0, ...}` has no "loss".
USER_KEYED_MAPS = ("optimizer.lr_multipliers",)


def _fill_missing(saved: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Adds the fields of `defaults` that `saved` lacks (recursively); returns their names."""
    added = []
    for key, value in defaults.items():
        name = prefix + key
        if key not in saved:
            saved[key] = value
            added.append(name)
        elif (
            isinstance(value, dict) and isinstance(saved[key], dict) and name not in USER_KEYED_MAPS
        ):
            added += _fill_missing(saved[key], value, f"{name}.")
    return added


def default_config() -> ml_collections.ConfigDict:
    """`configs/default.py`'s config: the default of every field (for an older run's
    missing fields, and an embeddings file's evaluation)."""
    from himl.configs import default

    return default.get_config()


def unwritable_reason(path) -> str | None:
    """Why a folder cannot be made (or written in) at `path`, naming its nearest existing
    ancestor; None when it can. The permission bits do not tell all (root, read-only
    mounts, /proc): a folder is made there and removed."""
    existing = Path(path).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only"
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        return f"cannot create a folder in {existing} ({e.strerror})"
    return None


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir.

    Fields added to himl after the run was made are taken from `configs/default.py`, and
    named on stderr, so older work directories stay evaluable.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise RunError(f"--workdir {workdir} is a file, not a directory")
    path = workdir / "config.json"
    saved = read_config_json(path)
    if saved is None:
        raise ConfigError(f"{path} not found: is {workdir} a himl-train work directory?")
    added = _fill_missing(saved, default_config().to_dict())
    if added and path.resolve() not in _NOTED_OLDER:  # a command may read it twice
        _NOTED_OLDER.add(path.resolve())
        print(f"note: {path} predates fields {added}; using their defaults", file=sys.stderr)
    return ml_collections.ConfigDict(saved)


_NOTED_OLDER: set[Path] = set()  # config.json files whose added fields were named


def get_config(workdir: str) -> ml_collections.ConfigDict:
    """The config-file entry point: `--config=<this file>:WORKDIR` loads the config.json
    of WORKDIR (or of the run of a checkpoint path) with the same types as the config
    file it was made from, so that `--config.x=y` overrides check them: lists become
    tuples, and a null field the defaults declare (a placeholder) keeps its type."""
    from himl.runs import default_config, load_run_config, split_checkpoint_path  # by path too

    if not workdir:
        raise ConfigError("--workdir is required: the run whose saved config to evaluate")
    saved = load_run_config(split_checkpoint_path(Path(workdir), None)[0]).to_dict()
    return _typed(saved, default_config())


def _typed(saved: dict, defaults) -> ml_collections.ConfigDict:
    """`saved` (JSON) as a ConfigDict typed like `defaults` where they share fields."""
    typed = {}
    for key, value in saved.items():
        known = isinstance(defaults, ml_collections.ConfigDict) and key in defaults
        if isinstance(value, dict):
            value = _typed(value, defaults[key] if known else None)
        elif isinstance(value, list):
            value = tuple(value)
        elif value is None and known and defaults.get_type(key) is not type(None):
            value = config_dict.placeholder(defaults.get_type(key))
        typed[key] = value
    return ml_collections.ConfigDict(typed)


def config_differences(
    saved: dict, config, sections=("model", "data", "seed"), skip=()
) -> list[str]:
    """`config.<key> = X here; the run saved Y` for each field of `sections` whose value
    in `config` differs from a run's saved config.json dict (`(absent)` where one lacks
    it), values as JSON; the dotted keys in `skip` (e.g. "data.manual_dir") left out."""
    used = json.loads(json.dumps(config.to_dict(), default=list))  # tuples as saved: lists

    def flat(tree, prefix):
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key in tree for k, v in flat(tree[key], f"{prefix}.{key}").items()}

    lines = []
    for section in sections:
        ours = flat(used.get(section, {}), f"config.{section}")
        theirs = flat(saved.get(section, {}), f"config.{section}")
        for key in dict.fromkeys([*ours, *theirs]):
            if key.removeprefix("config.") in skip:
                continue
            mine, run = (json.dumps(d[key]) if key in d else "(absent)" for d in (ours, theirs))
            if mine != run:
                lines.append(f"{key} = {mine} here; the run saved {run}")
    return lines


def split_checkpoint_path(path: Path, step: int | None) -> tuple[Path, int | None]:
    """`(workdir, step)` of a work directory or of a checkpoint `<workdir>/checkpoints/<step>`."""
    path = Path(path).expanduser()
    if path.name.isdigit() and path.parent.name == "checkpoints":
        if step is not None and step != int(path.name):
            raise ConfigError(f"--step={step} contradicts the checkpoint path {path}")
        return path.parent.parent, int(path.name)
    return path, step


def checkpoint_step(workdir: Path, step: int | None = None) -> int:
    """`step` (default: the latest) if `<workdir>/checkpoints` holds it; RunError if not."""
    steps = checkpoint_steps(workdir)
    directory = Path(workdir) / "checkpoints"
    if not steps:
        raise RunError(f"no checkpoint in {directory}: train first (himl-train)")
    if step is not None and step not in steps:
        raise RunError(f"no checkpoint for step {step} in {directory}; have {steps}")
    return steps[-1] if step is None else step


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps saved in `<workdir>/checkpoints`, ascending."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_specs(tree) -> dict[str, tuple]:
    """`{"params/model/conv0/kernel": (shape, dtype)}` for a state or its saved metadata
    (which stores dataclasses and named tuples as dicts, hence names, not key types)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
        for path, leaf in leaves
    }


def _check_model_shapes(path: Path, item, step: int) -> None:
    """Raises RunError naming the first model array whose shape or dtype differs between
    the checkpoint's metadata and this config's model (nothing is restored)."""
    try:  # the handler's metadata: the checkpointer's looks for a step-level file here
        saved = leaf_specs(ocp.PyTreeCheckpointHandler().metadata(path))
    except Exception:  # unreadable metadata: the restore below reports the checkpoint
        return
    for key, spec in leaf_specs(item).items():
        if key not in saved:
            raise RunError(
                f"checkpoint step {step} has no {key}: it was written by another model config"
            )
        if saved[key] != spec:
            raise RunError(
                f"checkpoint step {step} in {path.parent.parent} has {key} of shape/dtype "
                f"{saved[key]}, this config makes {spec}: it was written by another model "
                "config (left untouched)"
            )


def restore_model_variables(model, input_shape, workdir: Path, step: int | None = None):
    """`(variables, step)`: the model's `params` (and `batch_stats`) of checkpoint `step`
    (default: the latest), read with a partial restore; everything else stays on disk.

    Args:
      model: the Flax embedding network the run trained (`build_model(config.model)`).
      input_shape: `(H, W, C)` of its input, to know the variables' shapes.
    """
    workdir = Path(workdir).expanduser().absolute()  # orbax reads from absolute paths only
    step = checkpoint_step(workdir, step)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))
    item = {"params": {"model": abstract["params"]}}
    if abstract.get("batch_stats"):
        item["batch_stats"] = {"model": abstract["batch_stats"]}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), item)
    path = workdir / "checkpoints" / str(step) / "default"
    _check_model_shapes(path, item, step)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            out = checkpointer.restore(
                path,
                args=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True
                ),
            )
    except Exception as err:  # orbax raises many types; all mean "not this model's data"
        intact = [s for s in checkpoint_steps(workdir) if s != step]
        hint = f"; other steps: {intact} (--step)" if intact else ""
        raise RunError(
            f"cannot read the model of checkpoint {path.parent} (truncated or corrupt, or "
            f"written by another model config; left untouched){hint}"
        ) from err
    variables = {"params": out["params"]["model"]}
    if "batch_stats" in out:
        variables["batch_stats"] = out["batch_stats"]["model"]
    return variables, step
