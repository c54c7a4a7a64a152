"""experiments/paper_tables.py: the published rows, their official settings, and a smoke run
of every runnable row's exact command on fixture files in the published formats.

The smoke runs keep each row's config and data reader and swap only what a CPU cannot afford:
the small CNN (4 channels, 8-d) instead of ResNet-50, no pretrained file, 16-pixel images,
batches the tiny fixtures can fill, 2 steps, no worker processes.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_data_readers import (
    _jpg,
    write_cars_combined,
    write_cub,
    write_inshop,
    write_inshop_categories,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import paper_tables as pt  # noqa: E402

# The official settings as read from github.com/ljin0429/HIST (README training commands;
# code/train.py defaults: batch 32, --warm 1, --hgnn-hidden 512, --embedding-size 512,
# StepLR gamma 0.5) and the training-set sizes of the three benchmarks.
HIST_OFFICIAL = {
    "cub": dict(tau=32, alpha=1.1, epochs=40, lr=1.2e-4, lr_ds=1e-1, hgnn=5, wd=5e-5,
                decay=5, bn_freeze=True, train_images=5_864),
    "cars": dict(tau=32, alpha=0.9, epochs=50, lr=1e-4, lr_ds=1e-1, hgnn=10, wd=1e-4,
                 decay=10, bn_freeze=True, train_images=8_054),
    "sop": dict(tau=16, alpha=2.0, epochs=60, lr=1e-4, lr_ds=1e-2, hgnn=10, wd=1e-4,
                decay=10, bn_freeze=False, train_images=59_551),
}  # fmt: skip
PUBLISHED = {  # the numbers the brief and configs quote / the secondary source lists
    "hist_cub": 71.4,
    "hist_cars": 89.6,
    "hist_sop": 81.4,
    "himulcone_inshop_seen": 80.67,
    "himulcone_inshop_unseen": 75.29,
}


def test_every_row_has_its_published_number_and_a_known_config():
    assert [row.name for row in pt.ROWS] == list(PUBLISHED)
    for row in pt.ROWS:
        assert row.published == PUBLISHED[row.name]
        assert (REPO / row.config.split(":")[0]).is_file()
        assert row.source and row.metric and row.code
        assert (row.measured is None) == bool(row.blocked)
        assert (row.probe is not None) == (row.measured == ("probe", "accuracy"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_row_config_validates(name):
    from himl.config_lib import validate_config

    config = pt.load_config(pt.BY_NAME[name], ["--config.data.manual_dir=/data/somewhere"])
    validate_config(config)


@pytest.mark.parametrize("dataset", sorted(HIST_OFFICIAL))
def test_hist_rows_carry_the_official_settings(dataset):
    o = HIST_OFFICIAL[dataset]
    config = pt.load_config(pt.BY_NAME[f"hist_{dataset}"])
    per_epoch = o["train_images"] // 32  # drop_last batches of 32
    assert config.loss.name == "hist"
    hist = config.loss.hist
    assert (hist.tau, hist.alpha, hist.lambda_s, hist.hgnn_hidden) == (
        o["tau"],
        o["alpha"],
        1.0,
        512,
    )
    assert (config.model.name, config.model.embedding_dim, config.model.head) == (
        "resnet50",
        512,
        "hist",
    )
    assert config.model.freeze_bn is o["bn_freeze"]
    assert (config.data.batch_size, config.data.num_views) == (32, 1)
    assert (config.data.image_size, tuple(config.data.crop_scale)) == (224, (0.08, 1.0))
    assert (config.data.color_jitter, config.data.eval_crop) == (0.0, 224 / 256)
    opt = config.optimizer
    assert (opt.name, opt.learning_rate, opt.weight_decay) == ("adam_l2", o["lr"], o["wd"])
    assert opt.lr_multipliers.loss_means == pytest.approx(o["lr_ds"] / o["lr"])
    assert opt.lr_multipliers.loss_hgnn == o["hgnn"]
    assert (opt.schedule, opt.decay_factor) == ("step", 0.5)
    assert opt.decay_every == o["decay"] * per_epoch
    assert (opt.freeze_steps, tuple(opt.frozen_groups)) == (per_epoch, ("model",))
    assert config.train.steps == (o["epochs"] + 1) * per_epoch  # + the warm-up epoch


@pytest.mark.parametrize("name", ["himulcone_inshop_seen", "himulcone_inshop_unseen"])
def test_himulcone_row_carries_the_official_settings(name):
    # salesforce/hierarchicalContrastiveLearning: README (lr 0.5, temp 0.1, --cosine),
    # train_deepfashion.py (batch 512, 100 epochs, 10 warm-up epochs for batch >= 256, SGD).
    config = pt.load_config(pt.BY_NAME[name])
    per_epoch = 25_882 // 512  # In-Shop train images, each visited about once per epoch
    loss = config.loss.himulcone
    assert config.loss.name == "himulcone"
    assert (loss.temperature, loss.mode, loss.level_penalty) == (0.1, "reference", "exp")
    assert (config.data.sampler, config.data.batch_size, config.data.num_views) == (
        "hierarchical",
        512,
        2,
    )
    assert config.data.label_layout == "official"
    assert (tuple(config.data.crop_scale), config.data.color_jitter) == ((0.8, 1.0), 0.4)
    opt = config.optimizer
    assert (opt.name, opt.learning_rate, opt.schedule) == ("sgd", 0.5, "cosine")
    assert opt.warmup_steps == 10 * per_epoch and config.train.steps == 100 * per_epoch
    if name == "himulcone_inshop_seen":  # all categories, the published partition
        assert config.data.split_protocol == "official"
        assert tuple(config.eval.query_gallery) == ("query", "gallery")
    else:  # trained on the seen categories, evaluated on the unseen ones
        assert config.data.split_protocol == "held_out_categories"
        assert tuple(config.eval.query_gallery) == ("unseen_query", "unseen_gallery")
        probe = pt.BY_NAME[name].probe
        assert (probe.train_split, probe.test_split, probe.level) == (
            "unseen_train",
            "unseen",
            "category",
        )
    # --feature-extract (default): conv1, bn1, layer1 (3 blocks), layer2 (4 blocks) frozen.
    frozen = {k for k, v in opt.lr_multipliers.items() if v == 0.0}
    stages = {f"model_stage{s}_block{b}" for s, n in ((0, 3), (1, 4)) for b in range(n)}
    assert frozen == {"model_stem_conv", "model_stem_bn", *stages}


def test_wall_time_estimate_is_images_over_the_slower_rate():
    host = json.loads((REPO / "experiments/results/paper_tables_host_rates.json").read_text())
    eval_ips = min(3000, host["eval"])  # one core decodes the evaluation images
    train_ips = min(1000, 4 * host["train_no_jitter"])  # 4 grain workers, no jitter (HIST)
    cub = ((40 + 1) * 183 * 32 / train_ips + 3 * 5_924 / eval_ips) / 3600
    assert pt.estimate_hours(pt.BY_NAME["hist_cub"]) == pytest.approx(cub)
    train_ips = min(1000, 4 * host["train_jitter"])  # HiMulConE jitters colours
    eval_images = 3 * (14_218 + 12_612) + 25_882 + 14_218 + 12_612  # 3 evaluations + probe
    inshop = (5000 * 512 * 2 / train_ips + eval_images / eval_ips) / 3600
    assert pt.estimate_hours(pt.BY_NAME["himulcone_inshop_seen"]) == pytest.approx(inshop)
    # The unseen row counts all In-Shop images too: an upper bound of its share.
    assert pt.estimate_hours(pt.BY_NAME["himulcone_inshop_unseen"]) == pytest.approx(inshop)


def test_list_prints_every_row_with_its_number_and_estimate(capsys):
    assert pt.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, number in PUBLISHED.items():
        assert re.search(rf"^{name}\s+{number:.2f}\s", out, re.M), name
    assert out.count("ESTIMATE") == len(pt.ROWS)
    assert ("BLOCKED" in out) == any(row.blocked for row in pt.ROWS)
    assert "comparable in protocol, not split-for-split" in out  # the unseen row's note


def test_measured_value_reads_the_rows_path():
    row = pt.BY_NAME["hist_cub"]
    assert pt.measured_value(row, {"results": {"test": {"class": {"recall@1": 0.5}}}}) == 50.0
    with pytest.raises(pt.PaperTableError, match="results/test/class/recall@1.*'class'"):
        pt.measured_value(row, {"results": {"test": {}}})
    assert pt.measured_value(dataclasses.replace(row, measured=None), {}) is None


def test_a_blocked_row_stops_before_any_work(tmp_path):
    row = dataclasses.replace(pt.BY_NAME["hist_cub"], blocked="no reader yet")
    with pytest.raises(pt.PaperTableError, match="^row hist_cub cannot run yet: no reader yet$"):
        pt.run_row(row, manual_dir=".", pretrained="", workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    args = ["--row=hist_sop", f"--manual_dir={tmp_path}", f"--workdir={workdir}", "--dry_run"]
    assert pt.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert f"-m himl.train --config={REPO / 'configs/hist.py'}:sop" in lines[0]
    assert f"--config.data.manual_dir={tmp_path}" in lines[0]
    assert f"-m himl.eval --workdir={workdir} --noplots" in lines[1]
    assert not workdir.exists()
    # Before the files are here: the commands, with a placeholder for the folder.
    assert pt.main(["--row=hist_sop", f"--workdir={workdir}", "--dry_run"]) == 0
    assert "--config.data.manual_dir=MANUAL_DIR " in capsys.readouterr().out


def test_commands_run_in_the_users_folder_so_relative_set_paths_are_theirs(
    tmp_path, capsys, monkeypatch
):
    user = tmp_path / "user cwd"  # a space, as folders have
    (tmp_path / "cub").mkdir()
    user.mkdir()
    monkeypatch.chdir(user)
    args = ["--row=hist_cub", "--manual_dir=../cub", "--set=--config.data.data_dir=cache"]
    assert pt.main([*args, "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"(cd '{user}' && ")
    assert f"--config={REPO / 'configs/hist.py'}:cub" in lines[0]  # found from any folder
    assert f"'--config.data.manual_dir={user}/../cub'" in lines[0]
    assert f"'--workdir={user}/runs/paper_tables/hist_cub'" in lines[0]
    assert lines[0].endswith(" --config.data.data_dir=cache)")  # as typed, read from `user`

    ran = []  # what run_row would start, and where (the first command "fails": no work)
    monkeypatch.setattr(
        pt.subprocess,
        "run",
        lambda argv, **kw: ran.append((argv, kw)) or types.SimpleNamespace(returncode=1),
    )
    assert pt.main(args) == 2
    ((argv, kw),) = ran
    assert Path(kw["cwd"]) == user and "--config.data.data_dir=cache" in argv
    assert str(REPO) in kw["env"]["PYTHONPATH"].split(os.pathsep)  # himl importable there
    assert not (REPO / "cache").exists()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--row=hist_cub"], "needs --manual_dir"),
        (["--row=hist_cub", "--manual_dir=/nonexistent"], "/nonexistent is not a folder"),
        (["--row=hist_cub", "--manual_dir=.", "--pretrained=/no.pth"], "/no.pth is not a file"),
        (["--row=hist_cub", "--manual_dir=.", "--set=--config.train.stepz=3"], '"steps"'),
    ],
)
def test_bad_input_is_one_line_before_any_work(args, expected, tmp_path, capsys):
    assert pt.main([*args, f"--workdir={tmp_path / 'w'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paper_tables: error:") and expected in err[0]
    assert not (tmp_path / "w").exists()


# --- Smoke runs: the exact commands, 2 steps, on fixture files -------------------------


def write_sop(root):
    """Ebay_train.txt / Ebay_test.txt (header `image_id class_id super_class_id path`) and
    the images, as published: 4 training products in 2 super-classes, 2 test products."""
    rows = {"train": [], "test": []}
    for product in range(1, 7):
        part = "train" if product <= 4 else "test"
        folder = "bicycle_final" if product % 2 else "chair_final"
        for k in range(2):
            rows[part].append((len(rows["train"]) + len(rows["test"]) + 1, product,
                               1 + product % 2, f"{folder}/{product}_{k}.JPG"))  # fmt: skip
    for part, lines in rows.items():
        text = "image_id class_id super_class_id path\n"
        text += "".join(" ".join(map(str, r)) + "\n" for r in lines)
        (root / f"Ebay_{part}.txt").write_text(text)
        for r in lines:
            _jpg(root / r[3], seed=r[0])
    return root


SMALL = (
    "--config.model.name=small_cnn",
    "--config.model.widths=(4,)",
    "--config.model.embedding_dim=8",
    "--config.data.image_size=16",
    "--config.data.num_workers=0",
    "--config.train.steps=2",
    "--config.train.checkpoint_every=2",
    "--config.eval.batch_size=8",
    "--config.eval.ks=(1,2)",
)
HIST_SMALL = (
    "--config.model.freeze_bn=False",  # needs resnet50
    "--config.optimizer.freeze_steps=1",  # one frozen-backbone step, one full step
    "--config.loss.hist.hgnn_hidden=8",
)
# ResNet-50 itself (the frozen-stage multipliers name its layers), 8-d embedding; the
# official lr 0.5 after a 1-step warm-up (2 steps) diverges at 16 pixels: lr 0.01.
HIMULCONE_SMALL = (
    "--config.model.name=resnet50",
    "--config.model.embedding_dim=8",
    "--config.data.batch_size=8",
    "--config.optimizer.learning_rate=0.01",
)
SMOKE = {  # row: (fixture writer -> manual_dir, row-specific overrides)
    "hist_cub": (write_cub, (*HIST_SMALL, "--config.data.batch_size=3")),  # 3 train classes
    "hist_cars": (write_cars_combined, (*HIST_SMALL, "--config.data.batch_size=2")),
    "hist_sop": (write_sop, (*HIST_SMALL, "--config.data.batch_size=4")),
    "himulcone_inshop_seen": (write_inshop, HIMULCONE_SMALL),
    # 9 categories, 2 held out (test_data_readers.inshop_category_rows).
    "himulcone_inshop_unseen": (write_inshop_categories, HIMULCONE_SMALL),
}
# probe (num_train, num_test, num_classes) on the fixtures: In-Shop train -> query + gallery
# of 2 categories; unseen: the 2 held-out categories' 9 train and 6 query + gallery images.
PROBE_SIZES = {"himulcone_inshop_seen": (5, 3, 2), "himulcone_inshop_unseen": (9, 6, 2)}


def test_every_runnable_row_has_a_smoke_run():
    assert sorted(SMOKE) == sorted(row.name for row in pt.ROWS if not row.blocked)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_row_command_runs_on_fixture_files(name, tmp_path):
    writer, overrides = SMOKE[name]
    data = tmp_path / "data"
    data.mkdir()
    manual_dir = writer(data)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "paper_tables.py"),
            f"--row={name}",
            f"--manual_dir={manual_dir}",
            f"--workdir={workdir}",
            *(f"--set={o}" for o in (*SMALL, *overrides)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = pt.BY_NAME[name]
    measured = re.search(rf"^{name}: measured (\S+) ", result.stdout, re.M)
    assert measured, result.stdout[-2000:]
    assert 0.0 <= float(measured[1]) <= 100.0
    assert re.search(rf"^{name}: published {row.published:.2f} ", result.stdout, re.M)
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 2
    if row.probe is not None:
        metrics["probe"] = json.loads((workdir / "eval" / "probe.json").read_text())
        probe = metrics["probe"]
        sizes = (probe["num_train"], probe["num_test"], probe["num_classes"])
        assert sizes == PROBE_SIZES[name]
        assert (probe["level"], probe["step"]) == ("category", 2)
    assert pt.measured_value(row, metrics) == pytest.approx(float(measured[1]), abs=0.01)
    # The run used the row's config (its loss and data), not a default one.
    saved = json.loads((workdir / "config.json").read_text())
    official = pt.load_config(row)
    assert saved["loss"]["name"] == official.loss.name
    assert saved["data"]["name"] == official.data.name
    assert saved["optimizer"]["name"] == official.optimizer.name


def test_measure_host_rates_gives_positive_rates():
    rates = pt.measure_host_rates(n=3)
    assert all(rates[k] > 0 for k in ("train_no_jitter", "train_jitter", "eval"))
    assert rates["images"] == 3
