"""`himl-eval` (also `python -m himl.eval`): evaluate a himl-train checkpoint.

    himl-eval --workdir=runs/default                       # latest checkpoint, run's config
    himl-eval --workdir=runs/default --step=400 --splits=unseen
    himl-eval --workdir=runs/default/checkpoints/400          # the same checkpoint
    himl-eval --workdir=W --config.eval.ks=1,10,100 --config.eval.splits=unseen,seen_test
    himl-eval --workdir=W --config=configs/other_data.py      # another config file

`--config.x=y` overrides a field of the run's saved config.json (as himl-train's
overrides do its config file); `--config=FILE` evaluates with FILE's config instead, and
each field of `model`, `data` or `seed` that differs from the run's is printed as a note.
Writes `<workdir>/eval/metrics.json` (every number, the config used and the checkpoint
step), prints a table, and saves PNG plots (Recall@K, 2-D projection, retrieval grid);
the plots of the evaluation it replaces there are removed.

    himl-eval --embeddings=baseline.npz                    # embeddings made anywhere
    himl-eval --embeddings=catalogue.npz --splits=test --config.eval.ks=1,10 --out=DIR

`--embeddings` evaluates an .npz of `embeddings [N, D]` and `labels [N, L]` (optional
`level_names`, `split`, `paths`; `himl-embed --out` writes one, so can any other code) with
the same evaluators, table and metrics.json, in `<file stem>_eval/` beside it; only
`config.eval` and `config.seed` are read (see `himl.eval.embeddings_file`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from himl.cli import (
    DEFAULT_CONFIG,
    exit_on_user_error,
    help_from,
    run_quietly,
    with_default_config,
)
from himl.errors import ConfigError

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "himl-train work directory, or one of its checkpoints (<workdir>/checkpoints/<step>).",
)
_EMBEDDINGS = flags.DEFINE_string(
    "embeddings", None, "Instead of --workdir: an .npz of embeddings and labels to evaluate."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file (default: the run's saved config.json); --config.x=y overrides its fields.",
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_SPLITS = flags.DEFINE_list(
    "splits", None, "Splits to evaluate (default: config.eval.splits; the file's, --embeddings)."
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "Output directory (default: <workdir>/eval, or <file stem>_eval/ beside --embeddings); "
    "its earlier plots are removed.",
)
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    if _WORKDIR.value is None and _EMBEDDINGS.value is None:
        raise app.UsageError(ONE_SOURCE)  # both: refused by run_config_file
    if _EMBEDDINGS.value is not None:
        return _evaluate_embeddings()
    from himl.eval.run import evaluate_checkpoint

    with exit_on_user_error("himl-eval"):
        if _SPLITS.value is not None and "eval.splits" in flags.FLAGS["config"].override_values:
            raise ConfigError(  # one would silently win
                "give --splits or --config.eval.splits, not both (--splits is used as given)"
            )
        evaluate_checkpoint(
            _WORKDIR.value,
            config=_CONFIG.value,
            step=_STEP.value,
            splits=_SPLITS.value,
            out_dir=_OUT.value,
            plots=_PLOTS.value,
            progress=_PROGRESS.value,
        )


ONE_SOURCE = "give --workdir (a himl-train run) or --embeddings (an .npz)"
BOTH_SOURCES = f"{ONE_SOURCE}, not both"
# The fields an embeddings file is evaluated with (its splits are --splits).
EMBEDDINGS_FIELDS = ("eval.", "seed")


def _evaluate_embeddings():
    from himl.eval.embeddings_file import evaluate_embeddings

    overrides = flags.FLAGS["config"].override_values
    ignored = [k for k in overrides if not k.startswith(EMBEDDINGS_FIELDS) or k == "eval.splits"]
    with exit_on_user_error("himl-eval"):
        if "eval.splits" in ignored:
            raise ConfigError(
                "--config.eval.splits does not apply to --embeddings: name the file's splits "
                "with --splits"
            )
        if ignored or _STEP.value is not None:
            raise ConfigError(
                f"{f'--config.{ignored[0]}' if ignored else '--step'} does not apply to "
                "--embeddings, which reads only config.eval (its splits: --splits) and "
                "config.seed"
            )
        evaluate_embeddings(
            _EMBEDDINGS.value,
            config=_CONFIG.value,
            splits=_SPLITS.value,
            out_dir=_OUT.value,
            plots=_PLOTS.value,
        )


def run_config_file(argv: list[str]) -> str | None:
    """`himl/runs.py:WORKDIR`, the config file that is the saved config.json of the
    `--workdir` in `argv` (`himl.runs.get_config`); None without a --workdir, unless
    there are overrides (which then say that --workdir is missing)."""
    workdir = ""
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith(("--workdir=", "-workdir=")):
            workdir = arg.split("=", 1)[1]
        elif arg in ("--workdir", "-workdir") and i + 1 < len(argv):
            workdir = argv[i + 1]
    if any(a.startswith(("--embeddings", "-embeddings")) for a in argv):
        if workdir:
            print(f"himl-eval: error: {BOTH_SOURCES}", file=sys.stderr)
            sys.exit(2)
        return DEFAULT_CONFIG  # its eval section and seed
    if not workdir and not any(a.startswith("--config.") for a in argv):
        return None  # main says --workdir is needed (after --help, if asked)
    return f"{Path(__file__).parents[1] / 'runs.py'}:{workdir}"


def run():
    """Console-script entry point."""
    # ml_collections reads sys.argv
    sys.argv = with_default_config(sys.argv, run_config_file(sys.argv), "himl-eval")
    help_from(__name__)
    run_quietly(main, "himl-eval")


if __name__ == "__main__":
    run()
