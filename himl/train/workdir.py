"""A work directory's state, checked before a run changes anything in it.

A work directory holds a run once it holds a checkpoint (`checkpoints/<step>/`). Until the
new run is known to be valid (config checked, data loaded, batches made, checkpoint
restored), nothing in the directory is created, moved or rewritten - `config.json`
included. A directory with files of an earlier attempt but no checkpoint starts over, and
says so, after moving those files into `previous-<n>/`. A path that cannot become a
directory (under a file, or read-only) is refused when `Workdir` is made, before any data.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

from himl.config_lib import PATH_FIELDS
from himl.errors import ConfigError
from himl.runs import RunError, config_differences, read_config_json, unwritable_reason

# Files a run writes at the top of its work directory (plus TensorBoard event files).
DATA_FILE = "data.json"  # the fingerprint of the data the run trains on
RUN_FILES = ("config.json", DATA_FILE, "input.json", "metrics.json", "metrics.jsonl",
             "untrained.json")  # fmt: skip
EVENTS = "events.out.tfevents.*"


# A work directory that cannot hold this run (a file, a garbled config, another run): the
# same error type the readers of work directories raise.
WorkdirError = RunError


class ReadRecorder:
    """Wraps a config section and records which keys are read (`.keys_read`): the batch
    settings are exactly what the batcher reads, not a hand-kept list."""

    def __init__(self, section):
        self._section = section
        self.keys_read: set[str] = set()

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        self.keys_read.add(key)
        return getattr(self._section, key)

    def __getitem__(self, key):
        self.keys_read.add(key)
        return self._section[key]

    def __contains__(self, key) -> bool:
        return key in self._section

    def get(self, key, default=None):
        self.keys_read.add(key)
        return self._section.get(key, default)

    @property
    def unrecorded(self):
        """The section itself, for reads that change no batch (e.g. a note)."""
        return self._section


def _select(tree, dotted: str):
    """`tree["a"]["b"]` for "a.b"; a missing key gives `_MISSING`."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


_MISSING = object()


def _expand(key: str, tree) -> str:
    """`key` with each `{dotted.path}` replaced by that value of `tree`: "loss.{loss.name}"
    is "loss.himulcone" for a HiMulConE config."""
    return re.sub(r"\{([\w.]+)\}", lambda m: str(_select(tree, m.group(1))), key)


def jsonable(x):
    """A config dict as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(x, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _same_place(old, new) -> bool:
    """Whether two path values name the same file or folder: `~` expanded, a relative one
    taken from the working directory (as the command that saved it took it, when it ran
    from here), symlinks and `..` followed."""
    return os.path.realpath(os.path.expanduser(old)) == os.path.realpath(os.path.expanduser(new))


def _paths_as_new(saved: dict, new: dict) -> dict:
    """`saved` with each path field (`PATH_FIELDS`) that names the same place as in `new`
    replaced by `new`'s spelling: a run saved with `"source": "arr.npz"` (before himl made
    paths absolute) resumes with the same file given as `/home/me/arr.npz`."""
    saved = copy.deepcopy(saved)
    for dotted in PATH_FIELDS:
        parent, _, key = dotted.rpartition(".")
        old, value = _select(saved, parent), _select(new, parent)
        if not (isinstance(old, dict) and isinstance(value, dict)):
            continue
        a, b = old.get(key), value.get(key)
        if isinstance(a, str) and isinstance(b, str) and a and b and _same_place(a, b):
            old[key] = b
    return saved


def _difference(key: str, old, new) -> tuple | None:
    """`(dotted key, old, new)` of the first leaf where two config values differ (None if
    they are equal), so that a refusal names e.g. `optimizer.learning_rate`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(old.keys() | new.keys()):
            found = _difference(f"{key}.{name}", old.get(name, _MISSING), new.get(name, _MISSING))
            if found:
                return found
        return None
    if old is _MISSING or new is _MISSING:
        return (
            key,
            "(not set)" if old is _MISSING else old,
            "(not set)" if new is _MISSING else new,
        )
    return (
        None
        if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
        else (key, old, new)
    )


def _write_atomically(path: Path, text: str) -> None:
    """Writes `path` through a temporary file: a kill never leaves it half-written."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _data_difference(saved: dict, new: dict) -> str:
    """The first difference of two `Dataset.fingerprint`s, in words (the train split's
    first)."""
    names = sorted(set(saved) | set(new), key=lambda n: (n != "train", n))
    for name in names:
        before, now = saved.get(name, {}).get("images", 0), new.get(name, {}).get("images", 0)
        if before != now:
            return f"split {name!r} had {before} images, this run's data has {now}"
    name = next(n for n in names if saved[n] != new[n])
    return f"the images or labels of split {name!r} differ"


class Workdir:
    def __init__(self, path):
        self.path = Path(path).expanduser()
        self.checkpoints = self.path / "checkpoints"
        if self.path.exists() and not self.path.is_dir():
            raise WorkdirError(f"--workdir {self.path} is a file, not a directory")
        self._check_not_in_checkpoints()
        self._check_writable()
        self.saved_config = self._read_config()

    def _check_not_in_checkpoints(self) -> None:
        """Raises WorkdirError for a directory inside a run's `checkpoints/` (such as the
        `<run>/checkpoints/<step>` himl-eval and himl-embed accept): the run's checkpoint
        rotation would delete what is trained there."""
        for folder in [self.path.absolute(), *self.path.absolute().parents]:
            if folder.name == "checkpoints" and (folder.parent / "config.json").is_file():
                raise WorkdirError(
                    f"--workdir {self.path} is inside the checkpoints of the run in "
                    f"{folder.parent}, whose rotation would delete it: give --workdir="
                    f"{folder.parent} to resume that run, or a directory of its own"
                )

    def _check_writable(self) -> None:
        """Raises WorkdirError unless the directory, or its nearest existing ancestor (where
        it will be created), is a directory this process can write to."""
        reason = unwritable_reason(self.path)
        if reason:
            raise WorkdirError(f"--workdir {self.path} cannot be written: {reason}")

    def _read_config(self) -> dict | None:
        return read_config_json(self.path / "config.json")

    def holds_run(self) -> bool:
        """Whether the directory holds a checkpoint (a step folder under checkpoints/)."""
        return bool(self.steps())

    def steps(self) -> list[int]:
        """The checkpoint steps held here, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(p.name) for p in self.checkpoints.iterdir() if p.name.isdigit())

    def saved(self, key: str):
        """The saved run's value at dotted `key` of config.json (None if it has none)."""
        value = _select(self.saved_config or {}, key)
        return None if value is _MISSING else value

    def check_resume(self, config, keys) -> None:
        """Raises ConfigError (WorkdirError) if the run held here differs from `config` at
        any of `keys` - dotted config paths, where `{a.b}` stands for the value of `a.b`
        in `config` ("loss.{loss.name}": the selected loss's sub-config) - or is already
        beyond `config.train.steps`. A path field (`PATH_FIELDS`) saved in another
        spelling of the same place (relative, as older runs saved it) is the same value.
        Changes nothing."""
        if not self.holds_run():
            return
        if self.saved_config is None:
            raise WorkdirError(
                f"{self.checkpoints} holds checkpoints but {self.path / 'config.json'} is "
                "missing, so the run's settings cannot be checked: restore it, or use "
                "another --workdir"
            )
        new_config = jsonable(config.to_dict())
        saved_config = _paths_as_new(self.saved_config, new_config)
        for key in (_expand(k, new_config) for k in keys):
            old, new = _select(saved_config, key), _select(new_config, key)
            if old is _MISSING:  # a field added after the run was made
                continue
            if isinstance(old, dict) and isinstance(new, dict):
                new = {k: v for k, v in new.items() if k in old}  # fields added since
            differs = _difference(key, old, new)
            if differs:
                key, old, new = differs
                raise ConfigError(
                    f"{self.path} holds a run with config.{key} = {old}, this run has {new}; "
                    "use another --workdir (the saved run is left untouched)"
                )
        saved_steps, total = self.steps(), config.train.steps
        if saved_steps[-1] > total:
            raise ConfigError(
                f"{self.path} holds a run at step {saved_steps[-1]}, beyond config.train.steps="
                f"{total}: raise config.train.steps to continue it, or evaluate a saved step "
                f"({', '.join(map(str, saved_steps))}) with himl-eval --workdir={self.path} "
                "--step=N (the saved run is left untouched)"
            )

    def leftovers(self) -> list[Path]:
        """Files of an earlier attempt that never saved a checkpoint."""
        if not self.path.is_dir():
            return []
        found = [self.path / n for n in RUN_FILES if (self.path / n).exists()]
        return found + sorted(self.path.glob(EVENTS))

    def check_data(self, fingerprint: dict, config=None) -> None:
        """Raises WorkdirError if the run held here was trained on other data than
        `fingerprint` (`Dataset.fingerprint`: images and labels per split), e.g. a manifest
        edited since: its classes would change meaning mid-run and its evaluations mix two
        datasets. The message names the `config.data` settings that changed (e.g. a label
        layout), if any. A run made before himl recorded its data is not checked."""
        path = self.path / DATA_FILE
        if not self.holds_run() or not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise WorkdirError(
                f"{path} is damaged: delete it to resume without checking the data"
            ) from None
        if saved == fingerprint:
            return
        what = _data_difference(saved, fingerprint)
        changed = []
        if self.saved_config is not None and config is not None:
            # A path given in both may name moved data: left out. One given or dropped
            # (e.g. a class_list) is a setting that changed.
            new = jsonable(config.to_dict())
            moved = [d for d in PATH_FIELDS if all(
                isinstance(v, str) and v for v in (_select(self.saved_config, d), _select(new, d))
            )]  # fmt: skip
            changed = config_differences(self.saved_config, config, ("data",), moved)
        if changed:
            raise WorkdirError(
                f"{self.path} holds a run trained on other data ({what}; {path}), read with "
                f"other settings: {', '.join(changed)}; train in a new --workdir, or set them "
                "back"
            )
        raise WorkdirError(
            f"{self.path} holds a run trained on other data ({what}; {path}): train in a new "
            "--workdir, or restore the data it was trained on"
        )

    def write_data(self, fingerprint: dict) -> None:
        """Records the data of a run that starts (`check_data` reads it on resume)."""
        _write_atomically(self.path / DATA_FILE, json.dumps(fingerprint, indent=1, sort_keys=True))

    def start(self, config) -> None:
        """Called once the run is known to be valid: sets the directory up and writes
        `config.json`. Files of an attempt without a checkpoint are moved away, loudly."""
        if not self.holds_run():
            old = self.leftovers()
            if old:
                n = 1
                while (self.path / f"previous-{n}").exists():
                    n += 1
                keep = self.path / f"previous-{n}"
                keep.mkdir()
                for path in old:
                    path.rename(keep / path.name)
                print(
                    f"note: {self.path} holds no checkpoint: starting over from step 0; the "
                    f"earlier attempt's {', '.join(p.name for p in old[:4])}"
                    f"{'...' if len(old) > 4 else ''} moved to {keep}",
                    file=sys.stderr,
                )
        self.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(jsonable(config.to_dict()), indent=2, sort_keys=True)
        _write_atomically(self.path / "config.json", text)
