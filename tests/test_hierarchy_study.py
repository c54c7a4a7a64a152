"""The hierarchy study's arithmetic (paired intervals, batch composition, the table's
reliability marks) against hand computations, and one shortened run of the command."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location(
        "hierarchy_study", REPO / "experiments" / "hierarchy_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_paired_interval_is_the_t_interval_of_the_differences(study):
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0, 4: 9.0, 7: 50.0}  # seed 7 has no pair
    b = {0: 9.0, 1: 11.5, 2: 11.0, 3: 11.0, 4: 8.5, 5: 0.0}
    mean, half, n = study.paired_interval(a, b)
    d = [1.0, 0.5, 0.0, 2.0, 0.5]
    sd = np.sqrt(sum((x - np.mean(d)) ** 2 for x in d) / 4)
    assert n == 5
    assert mean == pytest.approx(0.8)
    assert half == pytest.approx(2.7764451 * sd / np.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert np.isnan(study.paired_interval({0: 1.0}, {0: 2.0})[1])


def test_batch_composition_counts_by_a_loop(study):
    from himl.configs import default
    from himl.data.embedded import load_embedded
    from himl.data.sampling import make_sampler

    config = default.get_config()
    config.data.sampler = "m_per_class"
    got = study.batch_composition(config, batches=3)
    dataset = load_embedded()
    labels = dataset.split("train").labels
    sampler = make_sampler(config.data, dataset, labels, seed=0)
    classes, groups, same, coarse = [], [], [], []
    for step in range(3):
        rows = labels[sampler.indices(step)]
        classes.append(len({r[1] for r in rows}))
        groups.append(len({r[0] for r in rows}))
        for i, r in enumerate(rows):
            same.append(sum(1 for j, s in enumerate(rows) if j != i and s[1] == r[1]))
            coarse.append(sum(1 for s in rows if s[0] == r[0] and s[1] != r[1]))
    assert got["classes"] == pytest.approx(np.mean(classes), abs=0.01) == 4
    assert got["coarse_labels"] == pytest.approx(np.mean(groups), abs=0.01)
    assert got["class_positives"] == pytest.approx(np.mean(same), abs=0.01) == 15
    assert got["coarse_only_positives"] == pytest.approx(np.mean(coarse), abs=0.01)


def test_every_sampler_of_the_plan_makes_its_batches(study, tmp_path):
    """Each sampler's cell config on the embedded default (the command's test below runs
    one of them): the control `many_classes` is m-per-class with all 7 training classes."""
    composition = {}
    for sampler in study.SAMPLERS:
        cell = dict(dataset="embedded", objective=study.BASELINE, sampler=sampler, seed=0)
        config = study.cell_config(cell, {"": ""}, tmp_path)
        composition[sampler] = study.batch_composition(config, batches=5)
    assert composition["m_per_class"]["classes"] == 4
    assert composition["many_classes"]["classes"] == 7
    assert composition["many_classes"]["class_positives"] == 7  # 8 images of each class
    assert composition["hierarchical"]["coarse_only_positives"] > 0


def _run(dataset, objective, sampler, seed, unseen_map):
    levels = ["group", "class"]
    row = {lv: {"recall@1": 0.5, "map@r": unseen_map, "nmi": 0.5} for lv in levels}
    row |= {"mistake_severity": 1.0, "linear_probe": 0.5}
    return dict(dataset=dataset, objective=objective, sampler=sampler, seed=seed, steps=600,
                levels=levels, results={"unseen": row, "seen_test": row})  # fmt: skip


def test_report_marks_only_differences_beyond_the_seed_noise(study):
    runs = {}
    for seed in range(5):
        runs[f"b{seed}"] = _run("embedded", "supcon_fine", "m_per_class", seed, 0.50 + 0.01 * seed)
        # reliably better: +2 points on every seed; noisy: +-3 points around 0
        runs[f"h{seed}"] = _run("embedded", "himulcone", "m_per_class", seed, 0.52 + 0.01 * seed)
        noise = 0.03 * (-1) ** seed
        runs[f"c{seed}"] = _run(
            "embedded", "hicone", "m_per_class", seed, 0.50 + 0.01 * seed + noise
        )
    text = study.report({"runs": runs, "composition": {}})
    paired = text.split("Paired difference")[1].splitlines()  # the second table
    himulcone = next(line for line in paired if line.startswith("| himulcone | m_per"))
    hicone = next(line for line in paired if line.startswith("| hicone | m_per"))
    assert himulcone.split(" | ")[3].startswith("**+2.00 [+2.00, +2.00]**")
    assert "**" not in hicone and "_" not in hicone.replace("m_per_class", "")


def test_every_objective_makes_a_valid_check_run_config(study, tmp_path):
    """`--steps N` shortens every objective's config to one that passes the run's checks
    (HIST's step schedule was left with decay_every=0, refused)."""
    from himl.config_lib import validate_config

    for objective in study.OBJECTIVES:
        cell = dict(dataset="embedded", objective=objective, sampler="m_per_class", seed=0,
                    steps=5)  # fmt: skip
        config = study.cell_config(cell, {}, tmp_path)
        validate_config(config, num_devices=1)
        assert config.train.steps == 5, objective


@pytest.mark.slow
def test_the_command_runs_a_shortened_study(tmp_path):
    out = tmp_path / "study.json"
    cmd = [sys.executable, "experiments/hierarchy_study.py", "--datasets", "embedded",
           "--objectives", "supcon_fine,himulcone", "--samplers", "hierarchical",
           "--seeds", "0", "--steps", "2", "--jobs", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 2  # 2 objectives x 1 sampler x 1 seed
    assert {(r["objective"], r["sampler"]) for r in data["runs"].values()} == {
        ("supcon_fine", "hierarchical"), ("himulcone", "hierarchical")}  # fmt: skip
    assert set(data["composition"]["embedded"]) == {"hierarchical"}
    assert all(r["steps"] == 2 for r in data["runs"].values())
    table = out.with_suffix(".md").read_text()
    assert "| himulcone | hierarchical | 1 |" in table
    assert out.with_suffix(".png").stat().st_size > 10_000
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "2 runs in the plan, 2 already in" in again.stdout  # resumes: nothing re-run


# ---------------------------------------------------------------- check runs, bad selections
COMMITTED = REPO / "experiments" / "results" / "hierarchy_study.json"
FULL_KEY = "embedded/supcon_fine/m_per_class/0"


def _zeroed(record: dict, steps: int) -> dict:
    """A copy of a stored run with every metric 0 and another length."""

    def zero(x):
        return {k: zero(v) for k, v in x.items()} if isinstance(x, dict) else 0.0

    return record | {"steps": steps, "results": zero(record["results"])}


def test_check_runs_leave_the_full_report_unchanged(study, tmp_path):
    """Finding 1: a `--steps` check run stored beside the full runs (here 1 step, and one
    as long as the plan's 600 but a check run all the same) and a run of an older, shorter
    plan give the same tables and figure as the file without them; `--steps 1` reports
    the check run alone."""
    committed = COMMITTED.read_bytes()
    data = json.loads(committed)
    full_seeds = sum(1 for key in data["runs"] if key.startswith(FULL_KEY[:-1]))
    assert full_seeds == 5
    clean, mixed = tmp_path / "clean.json", tmp_path / "mixed.json"
    clean.write_bytes(committed)
    base = data["runs"][FULL_KEY]
    data["runs"][FULL_KEY + "/steps=1"] = _zeroed(base, 1)
    data["runs"][FULL_KEY + "/steps=600"] = _zeroed(base, 600)
    data["runs"][FULL_KEY[:-1] + "9"] = _zeroed(base, 300) | {"seed": 9}
    mixed.write_text(json.dumps(data))
    for out in (clean, mixed):
        study.main(["--report", "--out", str(out)])
    table = clean.with_suffix(".md").read_text()
    assert "| supcon_fine | m_per_class | 5 |" in table
    assert mixed.with_suffix(".md").read_text() == table
    assert mixed.with_suffix(".png").read_bytes() == clean.with_suffix(".png").read_bytes()
    assert COMMITTED.read_bytes() == committed
    check = study.report(json.loads(mixed.read_text()), steps=1)
    assert "| supcon_fine | m_per_class | 1 | 0.00 ± 0.00 |" in check
    assert "| himulcone |" not in check


def test_a_run_of_another_length_is_run_again(study, tmp_path, monkeypatch):
    """Finding 1, resuming: a stored run that is not as long as the plan's is not done."""
    data = json.loads(COMMITTED.read_text())
    data["runs"][FULL_KEY] = _zeroed(data["runs"][FULL_KEY], 300)
    out = tmp_path / "study.json"
    out.write_text(json.dumps(data))
    ran = []

    def run_cell(job):
        cell = job[0]
        ran.append(study.run_id(cell))
        return study.run_id(cell), data["runs"][FULL_KEY] | {"steps": 600}

    monkeypatch.setattr(study, "run_cell", run_cell)
    study.main(["--datasets", "embedded", "--objectives", "supcon_fine", "--samplers",
                "m_per_class", "--jobs", "1", "--out", str(out)])  # fmt: skip
    assert ran == [FULL_KEY]


def test_steps_with_the_committed_results_file_is_refused(study, tmp_path, monkeypatch):
    """Finding 1: `--steps` never writes into the committed results (the default `--out`,
    or the same file named), in one line before anything is read or run."""
    monkeypatch.setattr(study, "RESULTS", tmp_path)  # the default --out, here a copy
    results = tmp_path / "hierarchy_study.json"
    results.write_bytes(COMMITTED.read_bytes())

    def no_study(*args):
        raise AssertionError("the study started")

    monkeypatch.setattr(study, "study", no_study)
    for argv in (["--steps", "1"], ["--steps", "2", "--out", str(results)]):
        with pytest.raises(SystemExit) as stop:
            study.main(argv + ["--datasets", "embedded", "--seeds", "0"])
        assert "pass --out" in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert results.read_bytes() == COMMITTED.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hierarchy_study.json"]


def _refused(study, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        study.main(argv)
    line = str(stop.value.code)
    assert stop.value.code != 0 and "\n" not in line
    return line


def test_nothing_to_report_is_one_line_and_writes_nothing(study, tmp_path):
    """Finding 7: `--report` without results, or with check runs only, says so."""
    line = _refused(study, ["--report", "--out", str(tmp_path / "none.json")])
    assert "none.json does not exist" in line
    assert list(tmp_path.iterdir()) == []
    data = json.loads(COMMITTED.read_text())
    only_check = {"runs": {FULL_KEY + "/steps=2": data["runs"][FULL_KEY] | {"steps": 2}}}
    (tmp_path / "check.json").write_text(json.dumps(only_check | {"composition": {}}))
    line = _refused(study, ["--report", "--out", str(tmp_path / "check.json")])
    assert "no full-length runs" in line and "--steps 2" in line
    assert [p.name for p in tmp_path.iterdir()] == ["check.json"]


def test_a_selection_outside_the_plan_names_the_plan_cells(study, tmp_path):
    """Finding 7: a filter that selects no cell is one line naming the dataset's cells."""
    out = tmp_path / "study.json"
    line = _refused(study, ["--datasets", "embedded,", "--objectives", "himulcon",
                            "--samplers", "many_classes", "--out", str(out)])  # fmt: skip
    assert line.startswith("no cell of the plan matches")
    for cell in ("himulcon/m_per_class", "himulcon/hierarchical", "himulcone/many_classes"):
        assert cell in line
    assert "himulcon/many_classes" not in line
    assert list(tmp_path.iterdir()) == []


def test_results_do_not_depend_on_the_cwd(study):
    """Finding 7: the default results folder is the repository's, wherever it runs."""
    assert (REPO / "experiments" / "results").resolve() == study.RESULTS


def test_seeds_parse_like_the_name_lists(study):
    """Finding 7: `--seeds "0,"` is seed 0; a seed that is not an integer is one line."""
    assert study._seeds("0,") == [0]
    assert study._seeds("1, 3,") == [1, 3]
    for text in ("a", "0,1.5", ","):
        with pytest.raises(SystemExit) as stop:
            study._seeds(text)
        assert str(stop.value.code).startswith("--seeds: ")
