"""Command-line plumbing shared by `himl-train` and `himl-eval`.

Errors a user can fix (bad flags, config overrides, files, checkpoints) become one clear
line and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import warnings
from importlib import resources
from pathlib import Path

from absl import flags

from himl.errors import UserError

CONFIGS = Path(str(resources.files("himl.configs")))  # the repository's configs/, installed
DEFAULT_CONFIG = str(CONFIGS / "default.py")  # himl-train's default


# Python's words for a value of the wrong type, as what the field takes.
_TYPE_WORDS = (
    (r"\('Non-boolean argument to boolean flag', '[^']*'\)", "a bool field: give true or false"),
    (r"could not convert string to float: '[^']*'", "a float field: give a number, e.g. 1e-3"),
    (r"invalid literal for int\(\) with base 10: '[^']*'", "an int field: give a whole number"),
)


def _one_line(err: BaseException) -> str:
    text = _raw_line(err)
    for pattern, words in _TYPE_WORDS:
        text = re.sub(pattern, words, text)
    return text


def _raw_line(err: BaseException) -> str:
    text = str(err.args[0]) if err.args else str(err)
    if "Traceback (most recent call last)" in text:
        # ml_collections wraps an error raised by a config file's get_config (e.g. an
        # unknown `:arg`) with its traceback: keep the exception's own message.
        last = [line for line in text.replace("\\n", "\n").splitlines() if line.strip()][-1]
        text = re.sub(r"^\s*[\w.]*(Error|Exception)\w*: ", "", last)
    text = " ".join(text.replace("\\n", " ").replace("\\'", "'").split())
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] == "'" else text


def with_default_config(argv: list[str], default: str | None, program: str = "himl") -> list[str]:
    """`argv` with its `--config=FILE` first (`default` when it names none), as
    ml_collections needs the file before any `--config.x=y` override.

    The config flag is defined without a default because ml_collections would load a
    default (and apply overrides) at import time, where errors cannot be reported nicely.
    `--config FILE` (a space, not `=`) is a one-line error: ml_collections would take
    FILE for a stray argument after loading the default config.
    """
    for i, arg in enumerate(argv[1:], start=1):
        if arg in ("--config", "-config"):
            value = argv[i + 1] if i + 1 < len(argv) else "FILE"
            print(
                f"{program}: error: write --config={value} (with '='), not '{arg} {value}'",
                file=sys.stderr,
            )
            sys.exit(2)
    files = [a for a in argv[1:] if a.startswith("--config=")]
    rest = [a for a in argv[1:] if not a.startswith("--config=")]
    if len(files) > 1:
        print(f"{program}: error: give --config once, got {' '.join(files)}", file=sys.stderr)
        sys.exit(2)
    if not files and default is not None:
        files = [f"--config={default}"]
    files = [f"--config={config_file(a.split('=', 1)[1], program)}" for a in files]
    return [argv[0], *files, *rest]


def installed_configs() -> dict[str, Path]:
    """The config files installed with himl (the repository's `configs/`, shipped as
    `himl.configs`), by name: {"cub": .../configs/cub.py, ...}."""
    return {p.stem: p for p in sorted(CONFIGS.glob("*.py")) if not p.stem.startswith("_")}


def _shared_settings(name: str) -> bool:
    """Whether installed config `name` only holds settings the others import."""
    return getattr(importlib.import_module(f"himl.configs.{name}"), "SHARED_SETTINGS", False)


def config_file(value: str, program: str = "himl") -> str:
    """`--config=` value `FILE[:ARG]`, with FILE taken from the installed configs when no
    such file exists here and FILE names one of them (`configs/cub.py`, `cub.py`, `cub`),
    so the README's commands work from any folder. A file that exists is used as given;
    a missing one that names no installed config is one line listing those that exist."""
    path, sep, arg = value.partition(":")
    if not path or Path(path).expanduser().exists():
        return value
    given = Path(path)
    name = given.stem if given.suffix == ".py" else given.name
    shipped = installed_configs()
    if not given.is_absolute() and given.parent in (Path("."), Path("configs")) and name in shipped:
        print(f"{program}: config {path} is himl's installed {shipped[name]}", file=sys.stderr)
        return f"{shipped[name]}{sep}{arg}"
    runnable = [n for n in shipped if not _shared_settings(n)]
    print(
        f"{program}: error: no config file {path} (the configs installed with himl: "
        f"{', '.join(runnable)}; e.g. --config=configs/default.py)",
        file=sys.stderr,
    )
    sys.exit(2)


def split_name_lists(config, overrides: dict) -> None:
    """Reads an unquoted override of a tuple field as names: `--config.eval.splits=a,b`
    is `("a", "b")` and `--config.eval.splits=` is `()`, as `--config.eval.ks=1,2` is
    `(1, 2)` (ml_collections would make them `("a,b",)` and `("",)`).

    `overrides` maps a field's dotted path to its parsed value (`override_values`); only
    a one-string tuple with a comma, or empty, changes: no name has either.
    """
    for path, value in overrides.items():
        one_string = isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], str)
        if not one_string or (value[0] and "," not in value[0]):
            continue
        *parents, key = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = tuple(name.strip() for name in value[0].split(",")) if value[0] else ()


def check_selected_loss(config, overrides: dict) -> None:
    """Refuses an override of a loss that `config.loss.name` does not select (only the
    selected loss's section is read: `--config.loss.supcon.temperature=0.2` would train
    the default loss unchanged, without a word)."""
    loss = config.get("loss") if hasattr(config, "get") else None
    if loss is None or "name" not in loss:
        return
    for path in overrides:
        section, _, key = path.partition(".")
        other = key.split(".", 1)[0]
        if section == "loss" and "." in key and other != loss.name and other in loss:
            raise ValueError(
                f"--config.{path} sets a loss that is not selected: config.loss.name={loss.name} "
                f"reads only config.loss.{loss.name} (add --config.loss.name={other})"
            )


def _missing_field(argv: list[str], overrides: list[str]) -> str | None:
    """For an override of a field the config does not have: `config.loss.supcon has no
    field 'temp'; its fields: ...` (ml_collections names only the key, or a close match).
    The config file is loaded again, without the overrides."""
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    try:
        path, *arg = files[-1].split(":", 1)  # as ml_collections reads `file.py[:arg]`
        spec = importlib.util.spec_from_file_location("himl_listed_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*arg)
        config.keys()
    except Exception:  # no config file, or one that does not load: nothing to list
        return None
    for arg in overrides:
        path = arg[len("--config.") :].split("=", 1)[0].split(".")
        node, where = config, "config"
        for key in path:
            if not hasattr(node, "keys"):
                break
            if key not in node:
                fields = ", ".join(sorted(node.keys()))
                return f"{where} has no field {key!r}; its fields: {fields}"
            node, where = node[key], f"{where}.{key}"
    return None


def _named_in(overrides: list[str], why: str) -> list[str]:
    """The overrides `why` is about: those whose flag it quotes, or the last field of whose
    path it quotes (ml_collections: "'stepz' Did you mean ...")."""

    def named(override):
        flag = override.split("=", 1)[0]
        return flag in why or f"'{flag.rsplit('.', 1)[-1]}'" in why

    return [o for o in overrides if named(o)]


def flags_parser(program: str):
    """An `absl.app.run(flags_parser=...)` that reports bad flags and config overrides
    (unknown field, wrong type, missing config file) in one line and exits 2, and reads
    comma-separated names in tuple overrides (`split_name_lists`)."""

    def parse(argv):
        try:
            rest = flags.FLAGS(last_overrides(argv))
            config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
            if config is not None:
                config.keys()  # a config file that failed to load raises only when touched
                split_name_lists(config, flags.FLAGS["config"].override_values)
                check_selected_loss(config, flags.FLAGS["config"].override_values)
            return rest
        except flags.Error as err:
            message = _one_line(err)
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as err:
            # The overrides, or the config file when there are none (a default added by
            # `with_default_config` is not what the user typed).
            overrides = [a for a in argv[1:] if a.startswith("--config.")]
            why = _one_line(err)
            if isinstance(err, KeyError | AttributeError) and "Did you mean" not in why:
                why = _missing_field(argv, overrides) or why  # ml_collections: just "'temp'"
            overrides = _named_in(overrides, why) or overrides
            overrides = overrides or [a for a in argv[1:] if a.startswith("--config")]
            message = f"bad --config or override ({' '.join(overrides)}): {why}"
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(2)

    return parse


def last_overrides(argv: list[str]) -> list[str]:
    """`argv` without the `--config.KEY=VALUE` overrides that a later one of the same KEY
    replaces: the last wins, as for any flag (ml_collections would join the values of a
    tuple field given twice, e.g. `--config.eval.ks=1 --config.eval.ks=2` into (1, 2))."""
    keys = [a.split("=", 1)[0].lstrip("-") if _is_override(a) else None for a in argv]
    return [a for i, a in enumerate(argv) if keys[i] is None or keys[i] not in keys[i + 1 :]]


def _is_override(arg: str) -> bool:
    return arg.startswith(("--config.", "-config.")) and "=" in arg


def help_from(module_name: str) -> None:
    """Makes `--help` describe the command of `module_name` (its docstring and flags).

    absl's help prints `__main__`'s docstring and the flags of the module that runs as
    `sys.argv[0]`; for a console script that is pip's wrapper, which has neither."""
    module = sys.modules.get(module_name, sys.modules["__main__"])
    sys.modules["__main__"].__doc__ = module.__doc__
    for flag in flags.FLAGS.get_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def _exit_now(status: int):
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: orbax's background asyncio threads of a failed
    # restore print tracebacks there that would bury a one-line error, and XLA's threads
    # of a process interrupted while it starts can crash it (a segmentation fault).
    os._exit(status)


@contextlib.contextmanager
def exit_on_user_error(program: str):
    """Prints `program: error: message` and exits 2 on a user error (Ctrl-C: `run_quietly`)."""
    try:
        yield
    except (UserError, FileNotFoundError) as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        _exit_now(2)  # nothing was written


def run_quietly(main, program: str) -> None:
    """`absl.app.run(main)` with the one-line flag errors of `flags_parser`, warnings in one
    line each, and Ctrl-C at any moment (importing JAX, loading the config file, compiling)
    exiting 130 with no traceback."""
    from absl import app

    warnings.formatwarning = lambda message, category, *_, **__: (
        f"{program}: {'warning' if category is UserWarning else category.__name__}: {message}\n"
    )  # one line: not the file, line and source of the code that warned
    try:
        app.run(main, flags_parser=flags_parser(program))
    except KeyboardInterrupt:
        _exit_now(130)  # a training loop saved its checkpoint before it raised
