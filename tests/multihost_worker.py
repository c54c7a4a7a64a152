"""One process of the multi-host test, and the steps both sides of that test take.

python tests/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.json
"""

import json
import os
import sys


def take_steps(num_steps: int = 3):
    """`(losses, conv0 kernel)` after the tiny config's first steps on a mesh over every
    device of every process (replicated results: this process's copy)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from himl.configs import tiny
    from himl.data.sampling import make_batcher
    from himl.train.experiment import build_experiment
    from himl.train.loop import device_batch, make_mesh, make_step_fn

    exp = build_experiment(tiny.get_config())
    mesh = make_mesh()
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    batcher = make_batcher(exp.config.data, exp.dataset, exp.config.seed)
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
    losses = []
    for step in range(num_steps):
        state, metrics = step_fn(state, device_batch(batcher(step), mesh))
        losses.append(float(metrics["loss"].addressable_data(0)))
    kernel = state.params["model"]["conv0"]["kernel"].addressable_data(0)
    return losses, np.asarray(kernel).ravel()


def main():
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, num_processes, process_id, out = sys.argv[1:5]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
    )
    losses, kernel = take_steps()
    with open(out, "w") as f:
        json.dump({"devices": jax.device_count(), "losses": losses, "kernel": kernel.tolist()}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
