"""One process of the multi-host test (run by tests/test_multihost.py, not by pytest).

python tests/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.json
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, num_processes, process_id, out = sys.argv[1:5]
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=int(num_processes),
    process_id=int(process_id),
)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from himl.configs import tiny  # noqa: E402
from himl.data.sampling import make_batcher  # noqa: E402
from himl.train.experiment import build_experiment  # noqa: E402
from himl.train.loop import device_batch, make_mesh, make_step_fn  # noqa: E402

exp = build_experiment(tiny.get_config())
mesh = make_mesh()
step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
batcher = make_batcher(exp.config.data, exp.dataset, exp.config.seed)
state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
losses = []
for step in range(3):
    state, metrics = step_fn(state, device_batch(batcher(step), mesh))
    losses.append(float(metrics["loss"].addressable_data(0)))  # replicated: local copy
kernel = state.params["model"]["conv0"]["kernel"].addressable_data(0)
with open(out, "w") as f:
    json.dump(
        {
            "devices": jax.device_count(),
            "losses": losses,
            "kernel": np.asarray(kernel).ravel().tolist(),
        },
        f,
    )
jax.distributed.shutdown()
