"""`himl-train` (also `python -m himl.train`): train, checkpoint, then evaluate.

    himl-train                                         # configs/default.py, ./runs/default
    himl-train --config=configs/tiny.py --workdir=/tmp/run
    himl-train --config.loss.name=supcon --config.train.steps=100

Running the same command again with the same --workdir resumes from its last checkpoint.
"""

from __future__ import annotations

import os
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
from himl.train.interrupt import stop_at_start_up

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, configs/*.py[:arg] (default: configs/default.py).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, metrics and metrics.json (default: ./runs/<config file name>).",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Train over several processes (hosts), each running this same command on a shared "
    "--workdir: jax.distributed.initialize() with what the cluster tells JAX (SLURM, Open "
    "MPI, TPU pods), or with --coordinator_address, --num_processes and --process_id.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (implies --distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 first.")
_JOIN_TIMEOUT = flags.DEFINE_integer(
    "join_timeout",
    300,
    "Seconds each process waits for all of them to join (JAX's default); then it aborts.",
)


def default_workdir(config_path: str) -> Path:
    return Path("runs") / Path(config_path.split(":")[0]).stem


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    # Imported here so that `--help` and flag errors answer before JAX starts.
    import jax

    from himl.train.processes import join_processes

    joining = _DISTRIBUTED.value or any(
        f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)
    )
    if joining:
        with exit_on_user_error("himl-train"):
            join_processes(
                _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _JOIN_TIMEOUT.value
            )
    from himl.train.loop import train_and_evaluate

    devices = jax.devices()  # every process's: the mesh the step runs over
    processes = f" (process {jax.process_index()} of {jax.process_count()})" * (
        jax.process_count() > 1
    )
    print(f"himl-train: workdir {workdir}, {len(devices)} {devices[0].platform} "
          f"device{'s' * (len(devices) > 1)}{processes}", file=sys.stderr)  # fmt: skip

    primary = jax.process_index() == 0
    if not primary:  # the first process prints the progress and results; errors are each's
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    with exit_on_user_error("himl-train"):
        train_and_evaluate(_CONFIG.value, workdir, progress=_PROGRESS.value and primary)


def run():
    """Console-script entry point."""
    # ml_collections reads sys.argv
    sys.argv = with_default_config(sys.argv, DEFAULT_CONFIG, "himl-train")
    help_from(__name__)
    stop_at_start_up()
    run_quietly(main, "himl-train")


if __name__ == "__main__":
    run()
