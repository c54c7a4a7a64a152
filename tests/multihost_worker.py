"""One process of the multi-host tests, and the work both sides of those tests do.

python tests/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID OUT.json [train|knn]
"""

import json
import os
import sys


def take_steps(num_steps: int = 3):
    """`(losses, conv0 kernel, state)` after the tiny config's first steps on a mesh over
    every device of every process (replicated results: this process's copy, and the
    replicated TrainState)."""
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
    return losses, np.asarray(kernel).ravel(), state


def save_and_restore(state, directory) -> bool:
    """Whether the replicated `state`, checkpointed by every process into one shared
    `directory` (each array written by the process holding its first replica), restores
    equal on this process."""
    import jax
    import numpy as np

    from himl.train.checkpoint import Checkpointer

    ckpt = Checkpointer(directory, every=1, keep=1)
    ckpt.save(1, state, force=True)
    ckpt.close()
    reader = Checkpointer(directory, every=1, keep=1)
    restored = reader.restore(state, 1)
    reader.close()
    local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), (state, restored))
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, *local)))


def knn_data():
    """Deterministic embeddings `[300, 8]` with exact duplicates spread over the shards, and
    two-level labels `[300, 2]`."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, 3, 300), rng.integers(0, 6, 300)], axis=1)
    x = (rng.normal(size=(300, 8)) + labels[:, 1:]).astype(np.float32)
    x[[7, 150, 299]] = x[3]  # ties across processes
    return x, labels


def search(mesh=None):
    """`{name: result}` of the kNN searches and metrics the multi-host kNN test compares."""
    from himl.eval.hierarchical import hierarchical_metrics
    from himl.eval.knn import knn

    x, labels = knn_data()
    out = {}
    for metric in ("cosine", "euclidean"):
        idx, scores = knn(x, k=12, metric=metric, block_size=16, mesh=mesh)
        out[f"{metric}_idx"], out[f"{metric}_scores"] = idx.tolist(), scores.tolist()
    q_idx, _ = knn(x[:40], x[40:], k=5, block_size=8, mesh=mesh)
    out["query_gallery_idx"] = q_idx.tolist()
    out["metrics"] = hierarchical_metrics(
        x, labels, ks=(1, 4), block_size=32, clustering=False, mesh=mesh
    )
    return out


def main():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    os.environ["XLA_FLAGS"] = flags.strip()  # the test session's flags, 4 devices
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, num_processes, process_id, out = sys.argv[1:5]
    task = sys.argv[5] if len(sys.argv) > 5 else "train"
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
    )
    if task == "knn":
        from himl.eval.knn import search_mesh

        result = search(search_mesh())  # the gallery sharded over both processes' devices
    else:
        losses, kernel, state = take_steps()
        restored = save_and_restore(state, os.path.join(os.path.dirname(out), "checkpoints"))
        result = {"losses": losses, "kernel": kernel.tolist(), "checkpoint_restored": restored}
    with open(out, "w") as f:
        json.dump({"devices": jax.device_count(), **result}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
