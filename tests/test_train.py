"""The training core: end to end, resume after a kill, 1 vs 8 devices, trace once."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from himl.config_lib import ConfigError
from himl.data.sampling import make_batcher
from himl.eval.run import evaluate_checkpoint
from himl.train.checkpoint import Checkpointer, CheckpointError
from himl.train.experiment import build_experiment
from himl.train.loop import device_batch, make_mesh, make_step_fn, train_and_evaluate
from himl.train.state import train_step


def _restore(workdir, exp, step=None):
    ckpt = Checkpointer(workdir / "checkpoints", every=1, keep=100)
    state = ckpt.restore(exp.initial_state(), step)
    ckpt.close()
    return state


def test_train_then_eval_end_to_end(tiny_config, tmp_path):
    summary = train_and_evaluate(tiny_config, tmp_path, progress=False)
    assert summary["step"] == tiny_config.train.steps
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["results"]["unseen"]["class"]["recall@1"] == pytest.approx(
        summary["results"]["unseen"]["class"]["recall@1"]
    )
    for results in (written["untrained"], written["results"]):
        level = results["unseen"]["class"]
        assert 0.0 < level["recall@1"] <= 1.0 and 0.0 <= level["nmi"] <= 1.0
    assert list(tmp_path.glob("events.out.tfevents.*"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert np.isfinite(json.loads(lines[0])["loss"])
    # The eval command restores the final checkpoint and reproduces the numbers.
    # Both metrics.json files have one layout: `step` and `results.<split>.<level>`.
    evaluated = evaluate_checkpoint(tmp_path, plots=False, progress=False)
    assert evaluated["step"] == tiny_config.train.steps
    assert evaluated["results"]["unseen"]["class"]["recall@1"] == pytest.approx(
        summary["results"]["unseen"]["class"]["recall@1"]
    )


def _batches(exp, steps):
    batcher = make_batcher(exp.config.data, exp.dataset, exp.config.seed)
    return [batcher(s) for s in range(steps)]


def _run_steps(exp, batches, mesh):
    step_fn = make_step_fn(exp.model, exp.objective, exp.tx, mesh)
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
    losses = []
    for batch in batches:
        state, metrics = step_fn(state, device_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_eight_devices_match_one(tiny_config):
    assert jax.device_count() == 8, "conftest forces 8 CPU devices"
    exp = build_experiment(tiny_config)
    batches = _batches(exp, 3)
    state8, losses8 = _run_steps(exp, batches, make_mesh())
    state1, losses1 = _run_steps(exp, batches, make_mesh(jax.devices()[:1]))
    assert len(state8.params["model"]["conv0"]["kernel"].sharding.device_set) == 8
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    chex.assert_trees_all_close(state8.params, state1.params, rtol=1e-4, atol=1e-6)


def test_train_step_is_traced_once(tiny_config):
    exp = build_experiment(tiny_config)
    mesh = make_mesh()

    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return train_step(state, batch, model=exp.model, objective=exp.objective, tx=exp.tx)

    jitted = jax.jit(step, donate_argnums=0)
    state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
    for batch in _batches(exp, 3):
        state, _ = jitted(state, device_batch(batch, mesh))
    assert int(state.step) == 3


def _train_cmd(workdir, steps):
    return [
        sys.executable,
        "-m",
        "himl.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}",
        "--config.train.checkpoint_every=10",
        "--config.eval.splits=()",
        "--noprogress",
    ]


def _wait_for_checkpoint(proc, directory, past_step, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if directory.is_dir() and any(
            p.name.isdigit() and int(p.name) > past_step for p in directory.iterdir()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past step {past_step} (rc={proc.poll()})")


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_parameters(tiny_config, tmp_path, mesh_env):
    steps = 200
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The commands run on this process's mesh: their parameters are compared bit for bit.
    run = functools.partial(
        subprocess.Popen, cwd=repo, stderr=subprocess.PIPE, text=True, env=mesh_env
    )
    ckpts = tmp_path / "interrupted" / "checkpoints"

    # Ctrl-C: the run saves where it stopped and exits 130.
    proc = run(_train_cmd(tmp_path / "interrupted", steps))
    _wait_for_checkpoint(proc, ckpts, 0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()
    first_stop = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert first_stop < steps

    # kill -9: nothing can be saved; the run resumes from its last periodic checkpoint.
    proc = run(_train_cmd(tmp_path / "interrupted", steps))
    _wait_for_checkpoint(proc, ckpts, first_stop + 10)
    proc.kill()
    proc.wait(timeout=60)
    assert max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) < steps

    done = subprocess.run(
        _train_cmd(tmp_path / "interrupted", steps),
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env=mesh_env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout

    tiny_config.train.steps = steps
    tiny_config.train.checkpoint_every = 10
    tiny_config.eval.splits = ()
    train_and_evaluate(tiny_config, tmp_path / "straight", progress=False)
    exp = build_experiment(tiny_config)
    resumed = _restore(tmp_path / "interrupted", exp)
    straight = _restore(tmp_path / "straight", exp)
    assert int(resumed.step) == int(straight.step) == steps
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)


def test_resume_refuses_a_different_model(tiny_run_copy):
    workdir, config = tiny_run_copy
    config.train.steps = 12
    config.model.embedding_dim = 8
    with pytest.raises(ConfigError, match="config.model"):
        train_and_evaluate(config, workdir, progress=False)


def test_corrupted_checkpoint_is_reported_and_left_alone(tiny_run_copy):
    workdir, config = tiny_run_copy
    files = sorted(p for p in (workdir / "checkpoints").rglob("*") if p.is_file())
    victims = [p for p in files if p.stat().st_size > 100]
    for p in victims:
        p.write_bytes(b"\0garbage" * 8)
    before = {p: p.read_bytes() for p in files}
    config.train.steps = 12
    with pytest.raises(CheckpointError, match="left untouched"):
        train_and_evaluate(config, workdir, progress=False)
    assert {p: p.read_bytes() for p in files} == before


def test_a_replicated_state_is_saved_whole_from_one_replica(tmp_path, caplog):
    """The train state is replicated over the mesh. orbax's default on CPU and TPU cuts each
    replicated array into one slice per device before writing (a compiled slice program per
    shape: 224 for ResNet-50, and ~4,700 dispatched slices per save); `Checkpointer` writes
    each array whole from one replica. Its checkpoints and those of earlier himl versions
    (orbax's `StandardSave`) restore both ways."""
    import orbax.checkpoint as ocp

    mesh = make_mesh()
    assert mesh.size == 8
    replicated = NamedSharding(mesh, P())
    state = {  # leading sizes that split over 8 replicas, shapes no other test slices
        "w": jax.device_put(np.arange(56 * 24, dtype=np.float32).reshape(56, 24), replicated),
        "b": jax.device_put(np.arange(72, dtype=np.int32), replicated),
    }
    ckpt = Checkpointer(tmp_path / "ckpt", every=1, keep=2)
    with jax.log_compiles(), caplog.at_level("WARNING"):
        assert ckpt.save(1, state)
        ckpt.close()
    traced = [r.getMessage() for r in caplog.records if "tracing" in r.getMessage()]
    assert traced == [], traced
    reader = Checkpointer(tmp_path / "ckpt", every=1, keep=2)
    restored = reader.restore(state, 1)
    reader.close()
    chex.assert_trees_all_equal(restored, state)
    assert restored["w"].sharding == replicated
    standard = ocp.StandardCheckpointer().restore(tmp_path / "ckpt" / "1" / "default")
    chex.assert_trees_all_equal(standard, jax.device_get(state))
    with ocp.CheckpointManager(tmp_path / "earlier") as earlier:  # as himl wrote before
        earlier.save(3, args=ocp.args.StandardSave(state))
    reader = Checkpointer(tmp_path / "earlier", every=1, keep=2)
    restored = reader.restore(state, 3)
    reader.close()
    chex.assert_trees_all_equal(restored, state)


def test_a_ctrl_c_at_start_up_that_python_drops_still_stops_the_run(monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collection callback is printed and
    dropped by Python ("Exception ignored in: <function _xla_gc_callback>"), and the run
    went on to train; the start-up handler remembers it and the loop stops before its first
    step."""
    import os
    import signal
    import sys
    import time

    from himl.train import interrupt

    monkeypatch.setattr(interrupt, "_EARLY", [])
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after
    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupt.stop_at_start_up()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
            pytest.fail("no KeyboardInterrupt")
        except KeyboardInterrupt:
            pass  # dropped, as a gc callback drops it
        with pytest.raises(KeyboardInterrupt), interrupt.StopRequests():
            pytest.fail("the loop started")
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(interrupt, "_EARLY", [])
    with interrupt.StopRequests() as stop:  # no signal: the loop runs
        assert stop.requested is None
