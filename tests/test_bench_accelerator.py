"""The accelerator benchmark command runs end to end at toy sizes and writes its JSON."""

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench_accelerator.py"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("bench_accelerator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_global_batch_and_knn_sections(bench, tmp_path):
    out = tmp_path / "bench.json"
    results = bench.main(
        [
            "--sections", "global_batch", "knn",
            "--start-batch", "64", "--max-batch", "128", "--chunk-size", "32",
            "--knn-n", "300", "--knn-d", "8", "--repeats", "2", "--out", str(out),
        ]
    )  # fmt: skip
    written = json.loads(out.read_text())
    assert written["meta"]["device_count"] == 8 and written["meta"]["platform"] == "cpu"
    runs = [r for r in written["global_batch"] if "loss_ms" in r]
    assert {(r["loss"], r["B"]) for r in runs} == {
        (name, b) for name in ("supcon", "himulcone") for b in (64, 128)
    }
    assert all(r["bf16_matmul_ms"] > 0 and r["compile_s"] > 0 for r in runs)
    assert [r["largest_B_run"] for r in written["global_batch"] if "largest_B_run" in r] == [
        128,
        128,
    ]
    supcon = [r for r in runs if r["loss"] == "supcon"]
    assert all(r["chunk_size"] == 32 for r in supcon)  # SupCon takes chunk_size=
    knn = written["knn"]
    assert knn["devices"] == 8 and 0.0 < knn["recall"]["recall@1"] <= 1.0  # sharded search
    assert knn["numpy_knn_s"] > 0 and results["knn"]["N"] == 300


def test_losses_section_alternates_himl_and_pml(bench, monkeypatch):
    """Each PML-equivalent loss is timed against a PML step in alternation (one call of
    each per round), on torch's device, and the ratio is the medians'."""
    torch = pytest.importorskip("torch")
    calls = []

    class FakePML(torch.nn.Module):  # stands in for pytorch_metric_learning's SupConLoss
        def forward(self, x, y):
            calls.append(x.device.type)
            return (x**2).sum() + 0.0 * y.sum()

    monkeypatch.setattr(bench, "_pml_factories", lambda: {"supcon": lambda c, d: FakePML()})
    monkeypatch.setattr(bench, "LOSSES", {k: bench.LOSSES[k] for k in ("supcon", "himulcone")})
    argv = ["--sections", "losses", "--batches", "16", "--dim", "8", "--repeats", "3"]
    results = bench.main(argv)
    rows = {r["loss"]: r for r in results["losses"]}
    supcon, himulcone = rows["supcon"], rows["himulcone"]
    assert supcon["pml_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert supcon["himl_calls"] == supcon["pml_calls"] >= 3
    assert supcon["x_pml"] == pytest.approx(supcon["pml_ms"] / supcon["himl_ms"])
    assert "pml_ms" not in himulcone and himulcone["himl_ms"] > 0  # no PML equivalent
    assert len(calls) >= 2 + supcon["pml_calls"]  # warm-up, first call, one per round


@pytest.fixture
def losses_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # its sibling `repo_paths`
    spec = importlib.util.spec_from_file_location("bench_losses", SCRIPT.parent / "bench_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_benchmark_alternates_himl_and_pml_and_writes_its_rows(
    losses_bench, monkeypatch, tmp_path
):
    """`experiments/bench_losses.py`: each PML-equivalent loss against a PML step in
    alternation, the NumPy reference at small B, and the rows in the JSON."""
    torch = pytest.importorskip("torch")
    calls = []

    class FakePML(torch.nn.Module):  # stands in for pytorch_metric_learning's loss
        def forward(self, x, y):
            calls.append(x.shape)
            return (x**2).sum() + 0.0 * y.sum()

    fake = {"triplet_margin": lambda c, d: FakePML()}
    monkeypatch.setattr(losses_bench, "_pml_factories", lambda: fake)
    out = tmp_path / "losses.json"
    argv = ["--batch-sizes", "16", "--dims", "8", "--repeats", "3", "--out", str(out)]
    rows = losses_bench.main([*argv, "--losses", "triplet_margin", "himulcone"])
    assert json.loads(out.read_text())["rows"] == rows
    triplet, himulcone = rows
    assert triplet["himl_calls"] == triplet["pml_calls"] >= 3 and triplet["pml_device"]
    assert triplet["speedup_vs_pml"] == pytest.approx(triplet["pml_ms"] / triplet["himl_ms"])
    assert triplet["numpy_ref_ms"] > 0  # B = 16 <= --ref-max-batch
    assert len(calls) >= 3 + triplet["pml_calls"] and calls[0] == (16, 8)
    assert "pml_ms" not in himulcone and himulcone["himl_ms"] > 0  # no PML equivalent


def test_json_keeps_each_measurement_of_a_run_stopped_midway(bench, tmp_path, monkeypatch):
    """The JSON is rewritten after every row: a run killed inside a section (a lent
    machine's time limit) keeps the rows it finished."""
    out = tmp_path / "bench.json"
    compile_calls = []
    real_compile = bench._compile

    def compile_then_stop(*args):
        compile_calls.append(1)
        if len(compile_calls) == 3:  # the second row's first compile: stopped from outside
            raise SystemExit("killed")
        return real_compile(*args)

    monkeypatch.setattr(bench, "_compile", compile_then_stop)
    argv = ["--sections", "global_batch", "--start-batch", "32", "--max-batch", "64"]
    with pytest.raises(SystemExit):
        bench.main([*argv, "--chunk-size", "16", "--repeats", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["global_batch"]
    assert [(r["loss"], r["B"]) for r in rows] == [("supcon", 32)] and rows[0]["loss_ms"] > 0


def test_deadline_skips_what_it_has_not_started(bench, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--sections", "losses", "global_batch", "knn", "resnet", "--deadline-s", "0"]
    argv += ["--batches", "16", "--start-batch", "32", "--knn-n", "100", "--resnet-batch", "2"]
    argv += ["--resnet-size", "32", "--out", str(out)]
    bench.main(argv)
    written = json.loads(out.read_text())
    skipped = [*written["losses"], *written["global_batch"][::2], written["knn"]]
    skipped += written["resnet"]
    assert all(r["skipped"] == "deadline" for r in skipped)
    assert len(written["losses"]) == len(bench.LOSSES)  # every loss listed as not measured
    assert [r["largest_B_run"] for r in written["global_batch"][1::2]] == [None, None]
