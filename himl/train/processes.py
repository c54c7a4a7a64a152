"""A run over several processes (hosts): joining them, and checking they run the same run.

Every process runs the same `himl-train` command on a shared work directory
(`--coordinator_address`, `--num_processes`, `--process_id`, or `--distributed` where JAX
reads the cluster's settings); `himl.train.loop` makes every process save the
checkpoints and process 0 alone write the other files.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from himl.errors import ConfigError
from himl.train.workdir import jsonable

# What every process of a run must be given alike, by section (`check_same_run`).
RUN_SECTIONS = ("workdir", "seed", "data", "model", "loss", "optimizer", "train", "eval")


def join_processes(
    coordinator_address=None, num_processes=None, process_id=None, timeout_s: int = 300
) -> None:
    """`jax.distributed.initialize` (on the CPU over gloo collectives), the values checked
    first: none given, JAX reads them from the cluster (SLURM, Open MPI, TPU pods).
    `timeout_s`: how long each process waits for all of them to join; JAX then ends the
    process (a fatal error, which no Python code can catch)."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}  # fmt: skip
    named = {k: v for k, v in given.items() if v is not None}
    if named and len(named) != 3:
        missing = ", ".join(f"--{k}" for k, v in given.items() if v is None)
        raise ConfigError(f"--{', --'.join(named)} given without {missing}: give all three")
    if timeout_s < 1:
        raise ConfigError(f"--join_timeout={timeout_s}: give the seconds to wait, >= 1")
    if named and num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes}: give how many processes, >= 1")
    if named and not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process_id={process_id} with --num_processes={num_processes}: the ids run "
            f"0..{num_processes - 1}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if named:  # JAX waits for every process, and then aborts with its own trace: say so first
        print(f"himl-train: process {process_id} of {num_processes} joining at "
              f"{coordinator_address} (waits up to {timeout_s} s, --join_timeout, for all "
              f"{num_processes} to start)", file=sys.stderr)  # fmt: skip
    try:
        jax.distributed.initialize(**named, initialization_timeout=timeout_s)
    except ValueError as e:  # e.g. no cluster JAX knows when none is given
        raise ConfigError(f"cannot join the processes: {e}") from None


def check_same_run(config, workdir) -> None:
    """ConfigError, in every process at once, when the processes of a run were given
    different work directories or configs: they would train apart (a setting that leaves
    the step's shapes alone, e.g. `train.steps`) or hang in a collective. One process: a
    no-op."""
    if jax.process_count() == 1:
        return
    values = {**jsonable(config.to_dict()), "workdir": str(Path(workdir).expanduser().absolute())}
    sections = [*RUN_SECTIONS, "config"]  # "config": any other field
    texts = [json.dumps(values.get(k), sort_keys=True) for k in RUN_SECTIONS]
    texts.append(json.dumps(values, sort_keys=True))
    digests = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digests))  # [processes, sections, 8]
    for process in range(1, len(every)):
        differs = [name for name, a, b in zip(sections, every[0], every[process], strict=True)
                   if not np.array_equal(a, b)]  # fmt: skip
        if differs:
            what = "--workdir" if differs[0] == "workdir" else f"config.{differs[0]}"
            raise ConfigError(
                f"process {process} was given another {what} than process 0: run the same "
                f"command (config, overrides, --workdir) in each of the {len(every)} processes"
            )
