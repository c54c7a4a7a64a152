"""When do all the labels help? Objectives x samplers x datasets x seeds, metrics per level.

    python experiments/hierarchy_study.py --jobs 2 \\
        --fashion_mnist DIR_OF_IDX_FILES --omniglot DIR_OF_OMNIGLOT_ZIPS
    python experiments/hierarchy_study.py --report       # tables + figure from the JSON only
    python experiments/hierarchy_study.py --datasets embedded \\
        --objectives supcon_fine,himulcone --samplers hierarchical   # a part of the plan

Trains every cell of the plan (`PLAN`, below) once per seed on the CPU-sized setup of the
main job (small CNN, 600 steps, 64-sample batches of two views), evaluates the final
embedding on unseen classes and on held-out images of seen classes at every level
(Recall@1, MAP@R, NMI, mistake severity = mean LCA height of the wrong top-1 neighbours,
lower is better, and a linear probe on the class level), and compares every objective with
SupCon on the fine labels *of the same sampler and seed* (paired differences, 95% t
interval over seeds). Results go to `experiments/results/hierarchy_study.json` after every
run (an interrupted study resumes where it stopped; a changed plan adds only the missing
runs), then `hierarchy_study.md` (tables) and `hierarchy_study.png` (figure). The tables,
the figure and the resume count only runs as long as their cell's config trains (a run of
another length is run again). `--steps N` checks the script with runs of N steps: they
need an `--out` other than the committed results, are stored under their own keys
(`.../steps=N`) and are reported only by a command with the same `--steps N`.

Datasets (a dataset whose folder is not given is skipped, with a line saying so):
  embedded             the embedded Fashion-MNIST subset (group -> class), as the main job;
  fashion_mnist        all 70,000 Fashion-MNIST images, same groups and unseen classes;
  omniglot_characters  Omniglot small sets (alphabet -> character) at 28 px: unseen
                       characters of seen alphabets;
  omniglot_alphabets   the same images, unseen alphabets (`held_out_alphabets` protocol).
Objectives: SupCon on the class labels (`supcon_fine`) and on the coarse labels
(`supcon_coarse`, `config.loss.flat_level`), HiMulCon, HiConE, HiMulConE in reference and
paper mode, and HIST (its own small recipe, `configs/hist.py`: HIST head, one view, 450
steps). Samplers: `m_per_class` (the main job's: 16 images of each of 4 classes, or 4 of
each of 16 characters on Omniglot), `hierarchical` (every anchor with a partner at each
level) and the control `many_classes` (m-per-class batches with about as many classes as
the hierarchical sampler's: all 7 classes x 8 images on Fashion-MNIST, 32 characters x 2
on Omniglot), which tells the hierarchical sampler's class coverage from its use of the
hierarchy. The batch composition of each sampler (classes and coarse groups per batch,
positives per anchor at each level) is measured from the sampler itself and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"  # the committed results, from any cwd
SPLITS = ("unseen", "seen_test")
SAMPLERS = ("m_per_class", "hierarchical", "many_classes")
# One thread per run: small CNNs use a second core poorly, two runs use it fully. XLA
# sizes its thread pool from the CPUs a process may run on, so each worker is also pinned
# to one CPU (`_pin_worker`) before it starts JAX.
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


# ---------------------------------------------------------------- datasets
@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How to build the base config of one dataset of the study."""

    folder: str  # which --flag gives its files ("" = none needed)
    build: Callable  # (folder, cache dir) -> config; reads no file
    # The "many_classes" control: m-per-class batches with (about) as many classes as the
    # hierarchical sampler's, to tell its class coverage from its use of the hierarchy.
    many_classes: dict = dataclasses.field(default_factory=dict)
    # (folder, cache dir) -> None: writes the files the config reads (once, before any run)
    prepare: Callable | None = None


def _embedded(folder, cache):
    from himl.configs import default

    return default.get_config()


def _fashion_mnist(folder, cache):
    from himl.configs import default

    config = default.get_config("fashion_mnist")
    config.data.manual_dir = folder
    return config


def omniglot_npz(protocol: str, cache: Path) -> Path:
    """Where `prepare_omniglot` writes the small sets of this split protocol."""
    return cache / f"omniglot_{protocol}_28.npz"


def prepare_omniglot(protocol: str):
    """The Omniglot small sets decoded once at 28 x 28 into an `.npz` (`himl.data.export`),
    so that training reads them from memory like the embedded default."""

    def prepare(folder, cache: Path) -> None:
        path = omniglot_npz(protocol, cache)
        if path.exists():
            return
        import himl.data
        from himl.data.export import write_npz

        dataset = himl.data.load(
            "omniglot", manual_dir=folder, split_protocol=protocol, image_size=28, eval_crop=1.0
        )
        write_npz(dataset, path.with_suffix(".tmp.npz"))
        path.with_suffix(".tmp.npz").rename(path)

    return prepare


def _omniglot(protocol: str):
    def build(folder, cache):
        from himl.configs import custom, default

        config = custom.get_config("seen_unseen,small")
        config.data.custom.source = str(omniglot_npz(protocol, cache))
        config.data.custom.levels = ("alphabet", "character")
        config.data.samples_per_class = 4  # 15 training drawers per character
        config.data.num_workers = 0
        config.eval.splits = SPLITS
        config.eval.batch_size = default.get_config().eval.batch_size
        return config

    return build


DATASETS = {
    # all 7 training classes, 8 images each (a 64 batch cannot hold 7 classes evenly)
    "embedded": DataSpec("", _embedded, {"samples_per_class": 8, "batch_size": 56}),
    "fashion_mnist": DataSpec(
        "fashion_mnist", _fashion_mnist, {"samples_per_class": 8, "batch_size": 56}
    ),
    # 32 characters of 2 images (the hierarchical sampler: ~43 characters per batch)
    "omniglot_characters": DataSpec(
        "omniglot",
        _omniglot("characters"),
        {"samples_per_class": 2},
        prepare_omniglot("characters"),
    ),
    "omniglot_alphabets": DataSpec(
        "omniglot",
        _omniglot("held_out_alphabets"),
        {"samples_per_class": 2},
        prepare_omniglot("held_out_alphabets"),
    ),
}


# ---------------------------------------------------------------- objectives
def _loss(name: str, *, coarse: bool = False, **hparams):
    def apply(config):
        config.loss.name = name
        config.loss[name].update(hparams)
        if coarse:
            config.loss.flat_level = config_levels(config)[0]
        return config

    return apply


def _hist(config):
    from himl.configs import hist

    return hist.small_recipe(config)


OBJECTIVES = {
    "supcon_fine": _loss("supcon"),
    "supcon_coarse": _loss("supcon", coarse=True),
    "himulcon": _loss("himulcon"),
    "hicone": _loss("hicone"),
    "himulcone": _loss("himulcone"),
    "himulcone_paper": _loss("himulcone", mode="paper"),
    "hist": _hist,
}
BASELINE = "supcon_fine"
KEY = ("supcon_fine", "himulcone")  # the main job's objective against its baseline
BOTH, MAIN = SAMPLERS[:2], ("m_per_class",)
# The plan, in the order it runs: (dataset, objectives, samplers). The key comparison on
# every dataset first, then the rest of the grid, so a study cut short is still balanced.
PLAN = (
    ("embedded", KEY, BOTH),
    ("omniglot_characters", KEY, BOTH),
    ("omniglot_alphabets", KEY, MAIN),
    ("fashion_mnist", KEY, MAIN),
    ("embedded", KEY, ("many_classes",)),
    ("omniglot_characters", KEY, ("many_classes",)),
    ("embedded", ("supcon_coarse", "hicone", "hist", "himulcon", "himulcone_paper"), BOTH),
    ("omniglot_characters", ("supcon_coarse", "hicone"), BOTH),
    ("omniglot_alphabets", KEY, ("hierarchical",)),
    ("omniglot_alphabets", ("supcon_coarse", "hicone"), MAIN),
    ("fashion_mnist", ("supcon_coarse", "hicone"), MAIN),
)


def config_levels(config) -> tuple[str, ...]:
    """The evaluated levels (coarse to class) of the study's datasets, without loading."""
    if config.data.name == "custom":
        return tuple(config.data.custom.levels)
    return ("group", "class")


def cell_config(cell: dict, dirs: dict, cache: Path):
    spec = DATASETS[cell["dataset"]]
    config = spec.build(dirs.get(spec.folder, ""), cache)
    config.seed = cell["seed"]
    config.eval.evaluators = ("retrieval", "linear_probe")
    config.eval.at_start = False
    config = OBJECTIVES[cell["objective"]](config)  # before the sampler: HIST's sets one
    if cell["sampler"] == "many_classes":
        config.data.sampler = "m_per_class"
        config.data.update(spec.many_classes)
    else:
        config.data.sampler = cell["sampler"]
    if cell.get("steps"):  # a quick check of the study itself, not a result
        config.train.steps = cell["steps"]
        config.train.log_every = config.train.checkpoint_every = cell["steps"]
        config.optimizer.warmup_steps = 0
        config.optimizer.decay_every = cell["steps"]  # a step schedule (HIST's) needs one
    return config


def run_id(cell: dict) -> str:
    """`dataset/objective/sampler/seed` (`/steps=N` for a shortened check run)."""
    key = "/".join(str(cell[k]) for k in ("dataset", "objective", "sampler", "seed"))
    return key + (f"/steps={cell['steps']}" if cell.get("steps") else "")


CHECK_RUN = re.compile(r"/steps=\d+$")  # how `run_id` marks a shortened check run


@functools.cache
def plan_length(dataset: str, objective: str, sampler: str) -> int:
    """The training steps of a full (not shortened) run of this cell, from its config."""
    cell = dict(dataset=dataset, objective=objective, sampler=sampler, seed=0)
    return int(cell_config(cell, {}, Path(tempfile.gettempdir())).train.steps)


def is_plan_run(key: str, record: dict, steps: int = 0) -> bool:
    """Whether a stored run belongs to the plan: with `steps` = 0 a full run (not a check
    run, and exactly as long as its cell's config trains, so not a run of an older, longer
    or shorter plan); else a `--steps` check run of exactly that length."""
    if steps:
        return key.endswith(f"/steps={steps}") and record.get("steps") == steps
    cell = (record["dataset"], record["objective"], record["sampler"])
    known = cell[0] in DATASETS and cell[1] in OBJECTIVES and cell[2] in SAMPLERS
    return known and not CHECK_RUN.search(key) and record.get("steps") == plan_length(*cell)


def plan_runs(runs: dict, steps: int = 0) -> dict:
    """The stored runs that the tables, the figure and a resumed study count
    (`is_plan_run`): check runs never mix with full-length runs."""
    return {key: r for key, r in runs.items() if is_plan_run(key, r, steps)}


# ---------------------------------------------------------------- one run
LEVEL_METRICS = ("recall@1", "map@r", "nmi")
SPLIT_METRICS = ("mistake_severity", "mean_lca_height@1", "mean_lca_height@8")


def compact(results: dict, levels) -> dict:
    """The numbers the study reads, per split: `{level: {metric}}`, severity, probe."""
    out = {}
    for split, r in results.items():
        row = {lv: {m: r[lv][m] for m in LEVEL_METRICS} for lv in levels}
        row.update({m: r[m] for m in SPLIT_METRICS if m in r})
        row["linear_probe"] = r["linear_probe"]["accuracy"]
        out[split] = row
    return out


def run_cell(job: tuple) -> tuple[str, dict]:
    """Trains one (dataset, objective, sampler, seed) in a scratch workdir."""
    cell, dirs, cache = job
    from himl.train.loop import train_and_evaluate

    config = cell_config(cell, dirs, cache)
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        summary = train_and_evaluate(config, workdir, progress=False)
    record = dict(cell)
    record["levels"] = summary["level_names"]
    record["results"] = compact(summary["results"], summary["level_names"])
    record["steps"] = summary["step"]
    record["wall_time_s"] = round(time.time() - start, 1)
    return run_id(cell), record


# ---------------------------------------------------------------- batch composition
def batch_composition(config, batches: int = 200) -> dict:
    """Mean per batch, over the first `batches` batches of seed 0: distinct classes and
    coarse labels, and per anchor the other samples of its class and of its coarse label
    but another class (the positives the class and coarse terms see; views not counted)."""
    from himl.data.registry import load_dataset
    from himl.data.sampling import make_sampler

    with contextlib.redirect_stdout(io.StringIO()):
        dataset = load_dataset(config.data)
    labels = dataset.split(config.data.train_split).labels
    sampler = make_sampler(config.data, dataset, labels, seed=0)
    c, stats = dataset.class_level, []
    for step in range(batches):
        rows = labels[sampler.indices(step)]
        same_class = rows[:, None, c] == rows[None, :, c]
        same_coarse = rows[:, None, 0] == rows[None, :, 0]
        stats.append(
            (
                len(np.unique(rows[:, c])),
                len(np.unique(rows[:, 0])),
                same_class.sum(1).mean() - 1,
                (same_coarse & ~same_class).sum(1).mean(),
            )
        )
    keys = ("classes", "coarse_labels", "class_positives", "coarse_only_positives")
    return dict(zip(keys, np.mean(stats, axis=0).round(2).tolist(), strict=True))


# ---------------------------------------------------------------- statistics
def values(runs, dataset, objective, sampler, key) -> dict[int, float]:
    """`{seed: value}` of metric `key` = (split, level index | None, metric), over runs of
    one length (`plan_runs`): a seed stored twice is an error, not a silent replacement."""
    split, level, metric = key
    scale = 1.0 if metric == "mistake_severity" else 100.0  # LCA heights; rates in %
    out = {}
    for r in runs.values():
        if (r["dataset"], r["objective"], r["sampler"]) == (dataset, objective, sampler):
            if r["seed"] in out:
                raise ValueError(f"two runs of {dataset}/{objective}/{sampler} seed {r['seed']}")
            row = r["results"][split]
            value = row[metric] if level is None else row[r["levels"][level]][metric]
            out[r["seed"]] = scale * value
    return out


def paired_interval(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean of the per-seed differences a - b and the half-width of its 95% t interval."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    if len(d) < 2:
        return float("nan"), float("nan"), len(d)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(half), len(d)


# (column title, (split, level index (0 coarse, -1 class) or None, metric), higher is better)
COLUMNS = (
    ("unseen coarse MAP@R", ("unseen", 0, "map@r"), True),
    ("unseen class MAP@R", ("unseen", -1, "map@r"), True),
    ("unseen class R@1", ("unseen", -1, "recall@1"), True),
    ("unseen class NMI", ("unseen", -1, "nmi"), True),
    ("unseen severity", ("unseen", None, "mistake_severity"), False),
    ("unseen probe", ("unseen", None, "linear_probe"), True),
    ("seen coarse MAP@R", ("seen_test", 0, "map@r"), True),
    ("seen class MAP@R", ("seen_test", -1, "map@r"), True),
    ("seen class R@1", ("seen_test", -1, "recall@1"), True),
)


def cells_done(runs, dataset):
    """[(objective, sampler)] with results in `runs` (`plan_runs`), in plan order."""
    present = {(r["objective"], r["sampler"]) for r in runs.values() if r["dataset"] == dataset}
    return [(o, s) for s in SAMPLERS for o in OBJECTIVES if (o, s) in present]


def report(data: dict, steps: int = 0) -> str:
    """Markdown: per dataset, mean +- std over seeds, then the paired differences from
    SupCon (fine) of the same sampler with their 95% intervals (bold: the interval
    excludes 0, i.e. larger than the seed noise). Full runs only, or with `steps` only
    the check runs of that length (`plan_runs`)."""
    runs, lines = plan_runs(data["runs"], steps), []
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in runs.values())]
    for dataset in datasets:
        levels = next(r["levels"] for r in runs.values() if r["dataset"] == dataset)
        lines += [f"### {dataset} (levels {' -> '.join(levels)})", ""]
        comp = data.get("composition", {}).get(dataset, {})
        for sampler, c in comp.items():
            lines.append(
                f"- `{sampler}` batches: {c['classes']:.1f} classes and {c['coarse_labels']:.1f} "
                f"{levels[0]}s per batch; per anchor {c['class_positives']:.1f} same-class and "
                f"{c['coarse_only_positives']:.1f} same-{levels[0]}-other-class samples"
            )
        header = "| objective | sampler | seeds | " + " | ".join(t for t, _, _ in COLUMNS) + " |"
        lines += ["", header, "|" + "---|" * (3 + len(COLUMNS))]
        for objective, sampler in cells_done(runs, dataset):
            cells = []
            for _, key, _ in COLUMNS:
                v = np.array(list(values(runs, dataset, objective, sampler, key).values()))
                f = ".3f" if key[2] == "mistake_severity" else ".2f"
                cells.append(f"{v.mean():{f}} ± {v.std(ddof=1) if len(v) > 1 else 0:{f}}")
            n = len(values(runs, dataset, objective, sampler, COLUMNS[0][1]))
            lines.append(f"| {objective} | {sampler} | {n} | " + " | ".join(cells) + " |")
        lines += ["", f"Paired difference from `{BASELINE}` (same sampler, same seeds), "
                  "mean [95% interval]; **bold**: reliably better, _italic_: reliably worse.",
                  "", header.replace("| seeds |", "| pairs |"),
                  "|" + "---|" * (3 + len(COLUMNS))]  # fmt: skip
        for objective, sampler in cells_done(runs, dataset):
            if objective == BASELINE:
                continue
            n = len(values(runs, dataset, objective, sampler, COLUMNS[0][1]))
            cells = [
                paired_text(runs, dataset, (objective, sampler), (BASELINE, sampler), key, higher)
                for _, key, higher in COLUMNS
            ]
            lines.append(f"| {objective} | {sampler} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def paired_text(runs, dataset, cell, base, key, higher: bool) -> str:
    """`mean [low, high]` of the per-seed differences `cell - base` (each an (objective,
    sampler)) of metric `key`; bold when reliably better, italic when reliably worse."""
    a = values(runs, dataset, *cell, key)
    b = values(runs, dataset, *base, key)
    mean, half, n = paired_interval(a, b)
    if n < 2:
        return "n/a (1 seed)" if n else "n/a"
    f = ".3f" if key[2] == "mistake_severity" else ".2f"  # LCA heights differ in 1e-3s
    text = f"{mean:+{f}} [{mean - half:+{f}}, {mean + half:+{f}}]"
    if np.isfinite(half) and abs(mean) > half:
        return f"**{text}**" if (mean > 0) == higher else f"_{text}_"
    return text


SAMPLER_CHANGES = (
    ("hierarchical", "m_per_class"),
    ("many_classes", "m_per_class"),
    ("hierarchical", "many_classes"),
)
SUMMARY_COLUMNS = [COLUMNS[i] for i in (1, 0, 4, 7, 6)]  # unseen class, coarse, severity, seen


def summary(data: dict, steps: int = 0) -> str:
    """One markdown table over all datasets: each objective's paired difference from
    SupCon (fine) with the same sampler, and each sampler change (hierarchical minus
    m_per_class, same objective), on the metrics that answer the question (the runs of
    `plan_runs(steps)`)."""
    runs = plan_runs(data["runs"], steps)
    header = "| dataset | compared | seeds | " + " | ".join(t for t, _, _ in SUMMARY_COLUMNS)
    lines = [header + " |", "|" + "---|" * (3 + len(SUMMARY_COLUMNS))]
    for dataset in [d for d in DATASETS if any(r["dataset"] == d for r in runs.values())]:
        done = cells_done(runs, dataset)
        pairs = [((o, s), (BASELINE, s), f"{o} - {BASELINE} ({s})")
                 for o, s in done if o != BASELINE and (BASELINE, s) in done]  # fmt: skip
        pairs += [((o, a), (o, b), f"{o}: {a} - {b}") for a, b in SAMPLER_CHANGES
                  for o in OBJECTIVES if (o, a) in done and (o, b) in done]  # fmt: skip
        for cell, base, label in pairs:
            n = len(set(values(runs, dataset, *cell, COLUMNS[0][1]))
                    & set(values(runs, dataset, *base, COLUMNS[0][1])))  # fmt: skip
            texts = [paired_text(runs, dataset, cell, base, key, higher)
                     for _, key, higher in SUMMARY_COLUMNS]  # fmt: skip
            lines.append(f"| {dataset} | {label} | {n} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def figure(data: dict, path: Path, steps: int = 0) -> None:
    """Per dataset (rows): MAP@R at each level on unseen and seen-test data (columns),
    mean +- std over seeds per objective, one marker per sampler (the runs of
    `plan_runs(steps)`; there must be some)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; set here, not at import
    import matplotlib.pyplot as plt

    runs = plan_runs(data["runs"], steps)
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in runs.values())]
    if not datasets:
        raise ValueError("no runs to plot")
    panels = [c for c in COLUMNS if c[1][2] == "map@r"]
    fig, axes = plt.subplots(
        len(datasets), len(panels), figsize=(3.4 * len(panels), 2.6 * len(datasets)),
        squeeze=False,
    )  # fmt: skip
    for row, dataset in zip(axes, datasets, strict=True):
        objectives = [o for o in OBJECTIVES if any(
            r["dataset"] == dataset and r["objective"] == o for r in runs.values())]  # fmt: skip
        for ax, (title, key, _) in zip(row, panels, strict=True):
            for i, sampler in enumerate(SAMPLERS):
                xs, means, stds = [], [], []
                for x, objective in enumerate(objectives):
                    v = np.array(list(values(runs, dataset, objective, sampler, key).values()))
                    if len(v):
                        xs.append(x + (i - 1) * 0.22)
                        means.append(v.mean())
                        stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
                if xs:
                    ax.errorbar(xs, means, yerr=stds, fmt="os^"[i], ms=4, capsize=2, label=sampler)
            ax.set_xticks(range(len(objectives)), objectives, rotation=60, fontsize=7)
            ax.set_title(f"{dataset}: {title}", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- driver
def plan_cells(datasets, seeds, objectives=None, steps: int = 0, samplers=None) -> list[dict]:
    """The plan's cells (dicts) for these datasets and seeds, limited to `objectives` and
    `samplers` where given (empty: all the plan names)."""
    cells = []
    for dataset, plan_objectives, plan_samplers in PLAN:
        if dataset not in datasets:
            continue
        for objective in [o for o in plan_objectives if not objectives or o in objectives]:
            for sampler in [s for s in plan_samplers if not samplers or s in samplers]:
                for seed in seeds:
                    cell = dict(dataset=dataset, objective=objective, sampler=sampler, seed=seed)
                    cells.append(cell | ({"steps": steps} if steps else {}))
    return cells


def write_outputs(data: dict, out: Path, steps: int = 0) -> None:
    """`out` (all the runs) and its `.md` tables (the runs of `plan_runs(steps)`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out)
    text = "## Summary: paired differences, 95% intervals over seeds\n\n" + summary(data, steps)
    tables = report(data, steps)
    out.with_suffix(".md").write_text(text + "\n\n## Per dataset\n\n" + tables + "\n")


def main(argv=None):
    committed = RESULTS / "hierarchy_study.json"
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument("--objectives", default="", help="default: each dataset's plan")
    parser.add_argument("--samplers", default="", help="default: each dataset's plan")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated config.seed values")
    parser.add_argument("--fashion_mnist", default="", help="folder of the Fashion-MNIST IDX")
    parser.add_argument("--omniglot", default="", help="folder of the Omniglot zips")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 thread each)")
    parser.add_argument("--cache", default="", help="where the Omniglot .npz is written")
    parser.add_argument("--out", default=str(committed), help="the results JSON")
    parser.add_argument("--report", action="store_true", help="only re-write table + figure")
    parser.add_argument(
        "--steps", type=int, default=0, help="check runs of this length (needs --out)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.steps < 0:
        sys.exit(f"--steps {args.steps}: give a positive number of steps (0: the plan's own)")
    if args.steps and out.resolve() == committed.resolve():
        sys.exit(f"--steps makes check runs: pass --out FILE (not the committed {committed})")
    data = json.loads(out.read_text()) if out.exists() else {"runs": {}, "composition": {}}
    if not args.report:
        data = study(args, data, out)
    if not plan_runs(data["runs"], args.steps):
        sys.exit(no_runs_line(data, out, args.steps))
    write_outputs(data, out, args.steps)
    figure(data, out.with_suffix(".png"), args.steps)
    print(report(data, args.steps))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


def no_runs_line(data: dict, out: Path, steps: int) -> str:
    """Why there is nothing to report, in one line."""
    if not out.exists():
        return f"no results: {out} does not exist (run the study, or pass --out FILE)"
    what = f"--steps {steps} check runs" if steps else "full-length runs of the plan"
    checks = sorted({int(m[0][7:]) for k in data["runs"] if (m := CHECK_RUN.search(k))})
    hint = f" (its check runs: --steps {', '.join(map(str, checks))})" if checks else ""
    return f"nothing to report: {out} holds no {what}{hint}"


def _pin_worker(workers) -> None:
    """Pool initializer: the k-th worker runs on the k-th allowed CPU (modulo their count);
    a no-op where the OS cannot pin (only Linux has `sched_setaffinity`)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    with workers.get_lock():
        index, workers.value = workers.value, workers.value + 1
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _names(text: str, valid, what: str) -> list[str]:
    """The names of a comma list (empty: none); exits with one line on an unknown one."""
    names = [name for name in text.split(",") if name]
    for name in names:
        if name not in valid:
            sys.exit(f"unknown {what} {name!r}; valid: {', '.join(valid)}")
    return names


def _seeds(text: str) -> list[int]:
    """The seeds of a comma list, read like `_names`; exits with one line on a bad one."""
    seeds = [s.strip() for s in text.split(",") if s.strip()]
    for s in seeds:
        if not s.lstrip("-").isdigit():
            sys.exit(f"--seeds: {s!r} is not an integer seed (give e.g. --seeds 0,1,2)")
    if not seeds:
        sys.exit("--seeds: no seed given (give e.g. --seeds 0,1,2)")
    return [int(s) for s in seeds]


def _no_cells_line(datasets: list[str], args) -> str:
    """Why the selection runs nothing, with the plan's cells of the selected datasets."""
    if not datasets:
        return f"no dataset to run: --datasets {args.datasets!r} names none with its files"
    plan = [
        f"{dataset}: "
        + ", ".join(f"{o}/{s}" for d, os_, ss in PLAN if d == dataset for o in os_ for s in ss)
        for dataset in datasets
    ]
    return (
        f"no cell of the plan matches --objectives {args.objectives!r} --samplers "
        f"{args.samplers!r}; the plan's cells (objective/sampler): {'; '.join(plan)}"
    )


def study(args, data: dict, out: Path) -> dict:
    if args.jobs > 1:  # before JAX starts, here and in the workers (they inherit it)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
    dirs = {"": "", "fashion_mnist": args.fashion_mnist, "omniglot": args.omniglot}
    datasets = []
    for name in _names(args.datasets, DATASETS, "dataset"):
        folder = DATASETS[name].folder
        if folder and not dirs[folder]:
            print(f"skipping {name}: give its files with --{folder}=DIR")
            continue
        datasets.append(name)
    objectives = _names(args.objectives, OBJECTIVES, "objective")
    samplers = _names(args.samplers, SAMPLERS, "sampler")
    seeds = _seeds(args.seeds)
    cells = plan_cells(datasets, seeds, objectives, args.steps, samplers)
    if not cells:
        sys.exit(_no_cells_line(datasets, args))
    cells = list({run_id(c): c for c in cells}.values())  # a cell named twice runs once
    done = plan_runs(data["runs"], args.steps)  # a run of another length is run again
    todo = [c for c in cells if run_id(c) not in done]
    print(f"{len(cells)} runs in the plan, {len(cells) - len(todo)} already in {out}")
    cache = Path(args.cache or tempfile.gettempdir()) / "himl_hierarchy_study"
    cache.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:  # data prepared and composition measured once, here
        used = {c["sampler"] for c in cells if c["dataset"] == dataset}
        measured = data["composition"].get(dataset, {})
        missing = [s for s in SAMPLERS if s in used and s not in measured]
        spec = DATASETS[dataset]
        if spec.prepare and (missing or any(c["dataset"] == dataset for c in todo)):
            spec.prepare(dirs[spec.folder], cache)
        for sampler in missing:
            config = cell_config(
                dict(dataset=dataset, objective=BASELINE, sampler=sampler, seed=0), dirs, cache
            )
            data["composition"].setdefault(dataset, {})[sampler] = batch_composition(config)
    write_outputs(data, out, args.steps)
    jobs = [(c, dirs, cache) for c in todo]
    if args.jobs > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        workers = context.Value("i", 0)
        pool = context.Pool(args.jobs, initializer=_pin_worker, initargs=(workers,))
        results = pool.imap(run_cell, jobs)  # in plan order: a cell's seeds finish together
    else:
        pool, results = None, map(run_cell, jobs)
    start = time.time()
    for i, (key, record) in enumerate(results, 1):
        data["runs"][key] = record
        write_outputs(data, out, args.steps)
        unseen = record["results"]["unseen"][record["levels"][-1]]
        print(
            f"[{i}/{len(todo)} {time.time() - start:.0f}s] {key}: unseen class MAP@R "
            f"{100 * unseen['map@r']:.2f} R@1 {100 * unseen['recall@1']:.2f} "
            f"({record['wall_time_s']:.0f}s)",
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()
    return data


if __name__ == "__main__":
    main()
