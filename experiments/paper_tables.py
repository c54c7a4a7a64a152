"""The papers' tables as commands: one himl run per published row, its number beside it.

    python experiments/paper_tables.py --list
    python experiments/paper_tables.py --row hist_cub --manual_dir=DIR --pretrained=FILE \
        [--workdir=W] [--dry_run] [--set=--config.model.dtype=bfloat16 ...]

`--row` prints and runs the exact `himl-train` command (as `python -m himl.train`, the same
entry point), then `himl-eval --noplots` on its work directory, both in the working
directory it was started from (so a relative path in `--set`, `--manual_dir` or `--workdir`
means what it means in your shell), then prints the measured
number beside the published one. Each row is an explicit entry of `ROWS`: the config (which
carries the official code's settings: configs/hist.py, configs/inshop.py), the published
number with its source, and what is known to differ from the official code. `--set` appends
config overrides after the row's own (smaller runs; the smoke tests use it).

Expected wall time is an ESTIMATE, not a measurement of a run (no GPU was available when
this table was written). Training: images processed (steps x batch x views of the config) at
the slower of an ASSUMED GPU rate and the host's decoding rate (`num_workers` grain workers x
the per-core rate of himl's augmentation); evaluation (untrained + trained in himl-train,
once more in himl-eval, plus a row's probe) at the slower of an ASSUMED GPU rate and one
core's decoding rate (the evaluator decodes in the main process). The per-core rates are
MEASURED by `--measure_host` (written to `HOST_RATES`; re-run it on your machine):

    python experiments/paper_tables.py --measure_host
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python experiments/paper_tables.py` from a checkout

from himl.errors import UserError  # noqa: E402

# GPU rates behind the wall-time estimates (one H100, ResNet-50, 224 x 224, float32/TF32):
# ASSUMED, NOT measured here.
ASSUMED_GPU_TRAIN_IPS = 1000.0  # training images (views) per second, forward + backward
ASSUMED_GPU_EVAL_IPS = 3000.0  # evaluation images per second, forward only
EVALUATIONS = 3  # himl-train evaluates untrained and trained; himl-eval once more
HOST_RATES = REPO / "experiments" / "results" / "paper_tables_host_rates.json"


@dataclasses.dataclass(frozen=True)
class Probe:
    """A linear probe the paper reports: logistic regression on the frozen embeddings of
    `train_split`, top-1 accuracy on `test_split`, labels of level `level`."""

    train_split: str
    test_split: str
    level: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One published number and the himl command that targets it."""

    name: str
    paper: str
    code: str  # the official implementation whose settings the config carries
    dataset: str
    metric: str
    published: float | None  # None: not found in what could be read (see `source`)
    source: str  # where the published number was read
    config: str  # configs/<file>.py:<arg>, relative to the repository root
    measured: tuple[str, ...] | None  # path into himl-eval's metrics.json; None: not computed
    measured_note: str  # what the measured number is, and whether it is the paper's metric
    eval_images: int  # images embedded per evaluation (published split sizes)
    differences: tuple[str, ...] = ()  # known differences from the official code
    blocked: str = ""  # non-empty: the row cannot run yet, and why
    probe: Probe | None = None  # computed after himl-eval, read as ("probe", "accuracy")
    probe_images: int = 0  # images the probe embeds (published split sizes)


HIST = "Lim et al., Hypergraph-Induced Semantic Tuplet Loss (HIST), CVPR 2022"
HIST_CODE = "github.com/ljin0429/HIST (README commands, code/train.py)"
HIST_SOURCE = (
    "HIST paper, Table of ResNet-50 (512-d) results, as quoted in configs/hist.py; the "
    "official README lists no numbers; not re-read from the paper PDF here"
)
HIST_DIFFERENCES = (
    "the official code reports the best test R@1 over epochs (evaluated every epoch); "
    "himl evaluates the last checkpoint",
    "official --bn-freeze also stops batch-norm scale/bias updates; himl's freeze_bn only "
    "keeps the running statistics",
    "sampler: official uniform random batches (--IPC 0); himl m_per_class with 1 per class",
)
HIMULCONE = "Zhang et al., Use All The Labels (HiMulConE), CVPR 2022"
HIMULCONE_CODE = (
    "github.com/salesforce/hierarchicalContrastiveLearning (README command, "
    "classification/train_deepfashion.py)"
)
HIMULCONE_SOURCE = (
    "not in the official README; read on a secondary page (wizwand.com 'Related benchmarks' "
    "of the paper, best result listed), NOT checked against the paper's tables"
)
HIMULCONE_DIFFERENCES = (
    "official head: MLP 2048-2048-128, probe on the 2048-d encoder features; himl: linear "
    "512-d embedding",
    "cosine decays to 0 (official to lr x 1e-3); colour jitter always applied (official p = 0.8)",
    "official starts from a SupCon-format checkpoint (--ckpt); himl from ImageNet weights",
    "official train/val/test list files are made by the user (not published) and drop the "
    "'repeating product ids'; himl uses In-Shop's list_eval_partition.txt train split",
    "official DDP computes the loss per GPU on 512 / #GPUs samples (no all-gather); himl on "
    "the global batch of 512",
    "probe: official trains a linear layer with SGD on its own train/test list files; here "
    "L-BFGS logistic regression on the L2-normalised embedding, In-Shop train -> query + "
    "gallery images",
)
INSHOP_EVAL = 14_218 + 12_612  # query + gallery
# The unseen row's split: himl's "held_out_categories" protocol (himl.data.readers_hier).
HIMULCONE_UNSEEN_DIFFERENCES = (
    *HIMULCONE_DIFFERENCES[:-1],  # all but the probe of the seen row
    "unseen categories: the paper's exact seen / unseen category lists are not public (not "
    "in the official repository, whose README links two Google-Drive files, its 'seen' link "
    "the same file as class_map.json; not in what could be read of the paper). himl holds "
    "out a documented choice, "
    "every 4th of the 17 categories in name order (Dresses, Leggings, Shorts, "
    "Sweatshirts_Hoodies), so the number is comparable in protocol, not split-for-split",
    "training: himl keeps 100 x 50 steps (100 epochs of all 25,882 train images); on the "
    "seen categories' train images alone that is more than 100 epochs",
    "probe: official trains a linear layer with SGD on its own list files; here L-BFGS "
    "logistic regression on the L2-normalised embedding, unseen categories' train images "
    "-> their query + gallery images, category labels",
)


ROWS = (
    Row(
        name="hist_cub",
        paper=HIST,
        code=HIST_CODE,
        dataset="CUB-200-2011 (classes 101-200)",
        metric="Recall@1 (%)",
        published=71.4,
        source=HIST_SOURCE,
        config="configs/hist.py:cub",
        measured=("results", "test", "class", "recall@1"),
        measured_note="Recall@1 on the test classes, cosine, last checkpoint",
        eval_images=5_924,
        differences=HIST_DIFFERENCES,
    ),
    Row(
        name="hist_cars",
        paper=HIST,
        code=HIST_CODE,
        dataset="Cars196 (classes 99-196)",
        metric="Recall@1 (%)",
        published=89.6,
        source=HIST_SOURCE,
        config="configs/hist.py:cars",
        measured=("results", "test", "model", "recall@1"),
        measured_note="Recall@1 on the test classes (model level), cosine, last checkpoint",
        eval_images=8_131,
        differences=HIST_DIFFERENCES,
    ),
    Row(
        name="hist_sop",
        paper=HIST,
        code=HIST_CODE,
        dataset="Stanford Online Products (Ebay_test)",
        metric="Recall@1 (%)",
        published=81.4,
        source=HIST_SOURCE,
        config="configs/hist.py:sop",
        measured=("results", "test", "class", "recall@1"),
        measured_note="Recall@1 on the test products, cosine, last checkpoint",
        eval_images=60_502,
        differences=HIST_DIFFERENCES,
    ),
    Row(
        name="himulcone_inshop_seen",
        paper=HIMULCONE,
        code=HIMULCONE_CODE,
        dataset="DeepFashion In-Shop, seen categories (all 17 in training)",
        metric="category top-1 accuracy, linear classifier (%)",
        published=80.67,
        source=HIMULCONE_SOURCE,
        config="configs/inshop.py:himulcone",
        measured=("probe", "accuracy"),
        measured_note=(
            "category top-1 of a linear probe, trained on the In-Shop train images, tested "
            "on the query + gallery images (himl-eval's In-Shop Recall@K is in metrics.json)"
        ),
        eval_images=INSHOP_EVAL,
        differences=HIMULCONE_DIFFERENCES,
        probe=Probe(train_split="train", test_split="test", level="category"),
        probe_images=25_882 + INSHOP_EVAL,
    ),
    Row(
        name="himulcone_inshop_unseen",
        paper=HIMULCONE,
        code=HIMULCONE_CODE,
        dataset=(
            "DeepFashion In-Shop, unseen categories (himl's held_out_categories: 4 of 17 "
            "categories unseen, a documented choice; the paper's lists are not public)"
        ),
        metric="category top-1 accuracy, linear classifier (%)",
        published=75.29,
        source=HIMULCONE_SOURCE,
        config="configs/inshop.py:himulcone_unseen",
        measured=("probe", "accuracy"),
        measured_note=(
            "category top-1 of a linear probe on the unseen categories (trained on their "
            "train images, tested on their query + gallery images) of a model trained on the "
            "seen ones; comparable in protocol, not split-for-split (himl-eval's unseen "
            "query -> gallery Recall@K is in metrics.json)"
        ),
        # Upper bounds (all of query + gallery, all train images): the unseen categories'
        # share is known only from the files.
        eval_images=INSHOP_EVAL,
        differences=HIMULCONE_UNSEEN_DIFFERENCES,
        probe=Probe(train_split="unseen_train", test_split="unseen", level="category"),
        probe_images=25_882 + INSHOP_EVAL,
    ),
)
BY_NAME = {row.name: row for row in ROWS}


class PaperTableError(UserError):
    """A bad row name, a missing file, a failed run: one line for the user."""


def load_config(row: Row, overrides=()):
    """The row's config with `overrides` (`--config.a.b=value` strings) applied, as the CLI
    would: ml_collections' own flag parser, so a typo fails here as it would in himl-train."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["paper_tables", f"--config={REPO / row.config}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
    )
    try:
        fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        message = " ".join(str(err).replace("\\n", " ").split())
        given = " ".join(overrides)
        raise PaperTableError(f"{row.name}: bad override ({given}): {message}") from err
    return fv.config


def measure_host_rates(n: int = 200) -> dict:
    """Images per second on one core for himl's train augmentation (with and without colour
    jitter) and evaluation transform, on a 500 x 375 JPEG (CUB's typical size)."""
    import io
    import platform
    import time

    import numpy as np
    from PIL import Image

    from himl.data.images import eval_transform, train_transform

    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 255, (47, 63, 3), dtype=np.uint8)  # photo-like JPEG size
    buffer = io.BytesIO()
    Image.fromarray(smooth).resize((500, 375), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()

    def rate(transform) -> float:
        start = time.perf_counter()
        for _ in range(n):
            transform(Image.open(io.BytesIO(data)).convert("RGB"))
        return n / (time.perf_counter() - start)

    crop = dict(size=224, scale=(0.08, 1.0), ratio=(0.75, 1.3333))
    return {
        "train_no_jitter": rate(lambda im: train_transform(im, rng, **crop, jitter=0.0)),
        "train_jitter": rate(lambda im: train_transform(im, rng, **crop, jitter=0.4)),
        "eval": rate(lambda im: eval_transform(im, 224, 0.875)),
        "images": n,
        "jpeg": "500 x 375, quality 90",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the start",
    }


def host_rates() -> dict:
    if not HOST_RATES.is_file():
        raise PaperTableError(f"{HOST_RATES} missing: run paper_tables.py --measure_host")
    return json.loads(HOST_RATES.read_text())


def estimate_hours(row: Row) -> float:
    """Expected wall time on one H100 in hours: an ESTIMATE (see the module docstring)."""
    config = load_config(row)
    host = host_rates()
    per_worker = host["train_jitter" if config.data.color_jitter > 0 else "train_no_jitter"]
    train_ips = min(ASSUMED_GPU_TRAIN_IPS, max(config.data.num_workers, 1) * per_worker)
    eval_ips = min(ASSUMED_GPU_EVAL_IPS, host["eval"])
    train_images = config.train.steps * config.data.batch_size * config.data.num_views
    eval_images = EVALUATIONS * row.eval_images + row.probe_images
    return (train_images / train_ips + eval_images / eval_ips) / 3600.0


def _hours_minutes(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def table_text() -> str:
    lines = [
        "row                      published  metric / config / estimated wall time (1 H100)",
        "-" * 100,
    ]
    for row in ROWS:
        number = f"{row.published:9.2f}" if row.published is not None else "  unknown"
        config = load_config(row)
        lines.append(f"{row.name:24s} {number}  {row.metric}; {row.dataset}")
        lines.append(f"{'':35s}paper: {row.paper}")
        lines.append(f"{'':35s}number from: {row.source}")
        lines.append(
            f"{'':35s}config: {row.config} ({config.train.steps} steps x "
            f"{config.data.batch_size} x {config.data.num_views} view(s)); settings of {row.code}"
        )
        lines.append(
            f"{'':35s}expected wall time: ~{_hours_minutes(estimate_hours(row))} (ESTIMATE, "
            f"{config.data.num_workers} workers; see --help)"
        )
        for difference in row.differences:
            lines.append(f"{'':35s}differs: {difference}")
        if row.blocked:
            lines.append(f"{'':35s}BLOCKED: {row.blocked}")
    return "\n".join(lines)


def commands(row: Row, *, manual_dir: str, pretrained: str, workdir: Path, extra=()):
    """(train argv, eval argv) of the row, run from the user's working directory (the
    config file by its absolute path)."""
    train = [
        sys.executable,
        "-m",
        "himl.train",
        f"--config={REPO / row.config}",
        f"--config.data.manual_dir={manual_dir}",
        f"--workdir={workdir}",
        "--noprogress",
    ]
    if pretrained:
        train.append(f"--config.model.pretrained={pretrained}")
    train += list(extra)
    evaluate = [sys.executable, "-m", "himl.eval", f"--workdir={workdir}", "--noplots"]
    evaluate.append("--noprogress")
    return train, evaluate


def measured_value(row: Row, metrics: dict) -> float | None:
    """The row's number (in %) from himl-eval's metrics.json; None if the row has none."""
    if row.measured is None:
        return None
    value = metrics
    for key in row.measured:
        if key not in value:
            raise PaperTableError(
                f"{row.name}: metrics.json has no {'/'.join(row.measured)} (missing {key!r})"
            )
        value = value[key]
    return 100.0 * float(value)


def probe_accuracy(workdir: Path, probe: Probe) -> dict:
    """`probe` on the latest checkpoint of `workdir` (himl.eval.linear_probe's dict)."""
    import himl
    from himl.data.registry import load_dataset
    from himl.eval.probe import linear_probe

    embedder = himl.load_embedder(workdir)  # the model's variables only
    config, step = embedder.config, embedder.step
    dataset = load_dataset(config.data)
    if probe.level not in dataset.level_names:
        raise PaperTableError(
            f"probe level {probe.level!r} is not a level of {dataset.name}: {dataset.level_names}"
        )
    level = dataset.level_names.index(probe.level)
    sides = []
    for name in (probe.train_split, probe.test_split):
        split = dataset.split(name)
        sides += [embedder.embed(split.images), split.labels[:, level]]
    result = linear_probe(*sides, seed=config.seed)
    return {**result, "step": step, **dataclasses.asdict(probe)}


def _check_inputs(row: Row, manual_dir: str, pretrained: str, dry_run: bool) -> None:
    if row.blocked:
        raise PaperTableError(f"row {row.name} cannot run yet: {row.blocked}")
    if dry_run:  # the commands only: the files may not be here yet
        return
    if not manual_dir:
        raise PaperTableError(f"row {row.name} needs --manual_dir (the {row.dataset} files)")
    if not Path(manual_dir).is_dir():
        raise PaperTableError(f"--manual_dir {manual_dir} is not a folder")
    if pretrained and not Path(pretrained).is_file():
        raise PaperTableError(f"--pretrained {pretrained} is not a file")


def run_row(row, *, manual_dir, pretrained, workdir, extra=(), dry_run=False) -> float | None:
    """Prints and runs the row's commands; returns the measured number (%) or None."""
    from himl.config_lib import absolute_path  # as himl-train records path fields

    manual_dir = absolute_path(manual_dir) if manual_dir else ""
    pretrained = absolute_path(pretrained) if pretrained else ""
    _check_inputs(row, manual_dir, pretrained, dry_run)
    manual_dir = manual_dir or "MANUAL_DIR"  # a dry run's placeholder
    load_config(row, extra)  # a bad --set fails now, before any work
    workdir = Path(absolute_path(workdir))
    train, evaluate = commands(
        row, manual_dir=manual_dir, pretrained=pretrained, workdir=workdir, extra=extra
    )
    if not pretrained:
        print(
            f"warning: no --pretrained: the backbone starts from random weights and the "
            f"result is not comparable with the published {row.published}",
            file=sys.stderr,
        )
    # In the user's working directory: a relative path in `extra` (--set) is theirs.
    cwd = Path.cwd()
    for argv in (train, evaluate):
        print(f"(cd {shlex.quote(str(cwd))} && {shlex.join(argv)})", flush=True)
    if dry_run:
        return None
    # himl importable from any folder, also from a checkout that is not pip-installed.
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    for argv in (train, evaluate):
        if subprocess.run(argv, cwd=cwd, env=env).returncode != 0:
            raise PaperTableError(f"{row.name}: command failed: {shlex.join(argv)}")
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    if row.probe is not None:
        print(f"{row.name}: linear probe {row.probe}", flush=True)
        metrics["probe"] = probe_accuracy(workdir, row.probe)
        (workdir / "eval" / "probe.json").write_text(json.dumps(metrics["probe"], indent=2))
    value = measured_value(row, metrics)
    published = f"{row.published:.2f}" if row.published is not None else "unknown"
    shown = f"{value:.2f}" if value is not None else "not computed"
    print(f"{row.name}: measured {shown} ({row.measured_note})")
    print(f"{row.name}: published {published} ({row.metric}; {row.source})")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="print the rows")
    parser.add_argument(
        "--measure_host", action="store_true", help=f"measure the decoding rates -> {HOST_RATES}"
    )
    parser.add_argument("--row", choices=sorted(BY_NAME), help="run this row")
    parser.add_argument("--manual_dir", default="", help="folder of the dataset's files")
    parser.add_argument("--pretrained", default="", help="ImageNet ResNet-50 weights file")
    parser.add_argument("--workdir", default="", help="default: runs/paper_tables/<row>")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="--config.KEY=VALUE",
        help="extra config override, after the row's (repeatable)",
    )
    args = parser.parse_args(argv)
    if not (args.list or args.row or args.measure_host):
        parser.error("give --list, --row or --measure_host")
    try:
        if args.measure_host:
            rates = measure_host_rates()
            HOST_RATES.parent.mkdir(parents=True, exist_ok=True)
            HOST_RATES.write_text(json.dumps(rates, indent=2) + "\n")
            print(json.dumps(rates, indent=2))
        if args.list:
            print(table_text())
        if args.row:
            row = BY_NAME[args.row]
            run_row(
                row,
                manual_dir=args.manual_dir,
                pretrained=args.pretrained,
                workdir=args.workdir or f"runs/paper_tables/{row.name}",
                extra=args.set,
                dry_run=args.dry_run,
            )
    except UserError as e:  # one line and status 2, as himl-train and himl-eval answer
        print(f"paper_tables: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
