"""Two processes x 4 CPU devices form one 8-device mesh over loopback (gloo collectives),
take the same training steps as one process with 8 devices, checkpoint and restore their
state together, and find the same exact
nearest neighbours (gallery sharded over both processes) as one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from multihost_worker import knn_data, search, take_steps

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
REPO = pathlib.Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, task: str) -> list[dict]:
    """Runs the worker's `task` in 2 processes x 4 devices; returns each one's JSON."""
    port = free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), "2", str(i), str(out), task],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    assert all(r["devices"] == 8 for r in results)
    return results


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    results = run_two_processes(tmp_path, "train")

    losses, kernel, _ = take_steps()  # one process, 8 devices
    for r in results:
        np.testing.assert_allclose(r["losses"], losses, rtol=1e-5)
        np.testing.assert_allclose(r["kernel"], kernel, rtol=1e-4, atol=1e-6)
        assert r["checkpoint_restored"]  # one shared checkpoint written by both processes


@pytest.mark.slow
def test_two_process_sharded_knn_matches_one_device(tmp_path):
    results = run_two_processes(tmp_path, "knn")
    one_device = search(mesh=None)
    for r in results:
        for key in ("cosine_idx", "euclidean_idx", "query_gallery_idx"):
            np.testing.assert_array_equal(r[key], one_device[key], err_msg=key)
        for key in ("cosine_scores", "euclidean_scores"):
            np.testing.assert_allclose(r[key], one_device[key], rtol=1e-6, atol=1e-6)
        assert r["metrics"] == one_device["metrics"]
    # Independent check of the one-device answer: float64 brute force, ties by index.
    x, _ = knn_data()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cost = -(xn[:, None, :].astype(np.float64) * xn[None, :, :]).sum(-1)
    np.fill_diagonal(cost, np.inf)
    ref = np.argsort(cost, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(one_device["cosine_idx"], ref)
    assert one_device["cosine_idx"][3][:3] == [7, 150, 299]


def run_himl_train(workdir, *overrides, second=(), returncode=0) -> list[str]:
    """`himl-train` in 2 processes x 4 devices over loopback, on one shared `workdir`
    (`second`: more arguments for process 1 only); returns each one's output."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    command = [sys.executable, "-m", "himl.train", "--config=configs/tiny.py", "--noprogress",
               f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", *overrides]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, f"--process_id={i}", *(second if i else ())],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == returncode, output[-3000:]
        assert "8 cpu devices (process" in output
        outputs.append(output)
    return outputs


@pytest.mark.slow
def test_a_process_whose_partner_never_starts_ends_after_the_join_timeout(tmp_path):
    """Process 0 of 2 alone: it says what it waits for and how long, and JAX ends it after
    --join_timeout seconds (not its default 5 minutes), before anything is written."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "himl.train", "--config=configs/tiny.py", "--noprogress",
               f"--workdir={tmp_path / 'run'}", f"--coordinator_address=127.0.0.1:{free_port()}",
               "--num_processes=2", "--process_id=0", "--join_timeout=2"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "waits up to 2 s, --join_timeout, for all 2 to start" in result.stderr
    assert "DEADLINE_EXCEEDED" in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_processes_given_different_runs_are_refused_in_each(tmp_path):
    """A setting that leaves the step's shapes alone (here train.steps) trained each
    process on its own schedule, their weights apart, and hung at the evaluation; another
    work directory hung at the first checkpoint. Both processes now stop with one line,
    before any data is read or anything is written."""
    for second, what in [
        (["--config.train.steps=16"], "config.train"),
        ([f"--workdir={tmp_path / 'other'}"], "--workdir"),
    ]:
        outputs = run_himl_train(tmp_path / "run", second=second, returncode=2)
        for output in outputs:
            assert f"himl-train: error: process 1 was given another {what} than process 0" in (
                output
            )
        assert not (tmp_path / "run").exists() and not (tmp_path / "other").exists()


@pytest.mark.slow
def test_himl_train_over_two_processes_matches_one(tmp_path):
    """`himl-train --coordinator_address=... --num_processes=2 --process_id=i` in each
    process: one run (every process saves the checkpoints, the first writes the other
    files, each metric row once), resumed the same way, with the losses and evaluation of
    one process on 8 devices (to float rounding: the collectives and the per-device
    evaluation batches differ)."""
    from himl.configs import tiny
    from himl.train.loop import train_and_evaluate

    overrides = ["--config.train.steps=4", "--config.eval.at_start=False"]
    run_himl_train(tmp_path / "two", *overrides)
    run_himl_train(tmp_path / "two", "--config.train.steps=6", "--config.eval.at_start=False")
    config = tiny.get_config()
    config.train.steps, config.eval.at_start = 4, False
    train_and_evaluate(config, tmp_path / "one", progress=False)
    config.train.steps = 6
    one = train_and_evaluate(config, tmp_path / "one", progress=False)

    def rows(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if "loss" in line]

    two_rows, one_rows = rows(tmp_path / "two"), rows(tmp_path / "one")
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows]
    np.testing.assert_allclose([r["loss"] for r in two_rows], [r["loss"] for r in one_rows],
                               rtol=1e-5)  # fmt: skip
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["step"] == 6 and sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()
                                       if p.name.isdigit()) == ["4", "6"]  # fmt: skip
    for level in ("group", "class"):
        got, want = (
            two["results"]["unseen"][level],
            one["results"]["unseen"][level],
        )
        for key in ("recall@1", "map@r", "nmi"):
            assert got[key] == pytest.approx(want[key], abs=1e-3), (level, key)
