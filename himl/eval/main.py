"""`himl-eval` (also `python -m himl.eval`): evaluate a himl-train checkpoint.

    himl-eval --workdir=runs/default                       # latest checkpoint, run's config
    himl-eval --workdir=runs/default --step=400 --splits=unseen
    himl-eval --workdir=runs/default/checkpoints/400          # the same checkpoint
    himl-eval --workdir=W --config=configs/default.py --config.eval.ks=1,10,100

Writes `<workdir>/eval/metrics.json` (every number, the config and the checkpoint step),
prints a table, and saves PNG plots (Recall@K, 2-D projection, retrieval grid).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from himl.cli import exit_on_user_error, flags_parser, with_default_config

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "himl-train work directory, or one of its checkpoints (<workdir>/checkpoints/<step>).",
    required=True,
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional config file (default: the run's saved config.json)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to evaluate (default: config.eval.splits).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: <workdir>/eval).")
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    from himl.eval.run import evaluate_checkpoint

    with exit_on_user_error("himl-eval"):
        evaluate_checkpoint(
            _WORKDIR.value,
            config=_CONFIG.value,
            step=_STEP.value,
            splits=_SPLITS.value,
            out_dir=_OUT.value,
            plots=_PLOTS.value,
            progress=_PROGRESS.value,
        )


def run():
    """Console-script entry point."""
    sys.argv = with_default_config(sys.argv, None, "himl-eval")  # ml_collections reads sys.argv
    app.run(main, flags_parser=flags_parser("himl-eval"))


if __name__ == "__main__":
    run()
