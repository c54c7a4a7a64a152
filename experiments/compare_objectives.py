"""Table: unseen- and seen-class retrieval of each objective on the embedded default.

    python experiments/compare_objectives.py --losses supcon,himulcon,hicone,himulcone \
        --seeds 0,1,2 --out experiments/results/compare_objectives.json

Trains `configs/default.py` once per (loss, seed) with only `config.loss.name` and
`config.seed` changed (plus any `--set key=value` overrides), then prints mean +- std over
seeds of Recall@1, MAP@R and NMI at the class level, with the untrained embedding as the
first row. Each run takes about a minute on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
from pathlib import Path

import numpy as np

from himl.configs import default
from himl.eval.report import format_table
from himl.train.loop import train_and_evaluate

METRICS = ("recall@1", "map@r", "nmi")


def set_path(config, dotted: str, value: str):
    *parents, leaf = dotted.split(".")
    for p in parents:
        config = config[p]
    try:
        config[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        config[leaf] = value


def run_one(loss: str, seed: int, overrides: list[str]) -> dict:
    config = default.get_config()
    config.loss.name = loss
    config.seed = seed
    for item in overrides:
        set_path(config, *item.split("=", 1))
    with tempfile.TemporaryDirectory() as workdir:
        return train_and_evaluate(config, workdir, progress=False)["results"]


def summarise(runs: dict, split: str, level: str) -> list[list[str]]:
    rows = []
    for name, results in runs.items():
        cells = [name]
        for metric in METRICS:
            values = 100 * np.array([r[split][level][metric] for r in results])
            cells.append(f"{values.mean():.2f} +- {values.std():.2f}")
        rows.append(cells)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default="supcon,himulcon,hicone,himulcone")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--out", default="experiments/results/compare_objectives.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list] = {"untrained": []}
    for loss in args.losses.split(","):
        runs[loss] = []
        for seed in seeds:
            results = run_one(loss, seed, args.set)
            runs[loss].append(results["trained"])
            if len(runs["untrained"]) < len(seeds):
                runs["untrained"].append(results["untrained"])
            print(
                f"{loss} seed {seed}: unseen class R@1 "
                f"{results['trained']['unseen']['class']['recall@1']:.4f}",
                flush=True,
            )
    header = ["objective"] + [f"{m} (%)" for m in METRICS]
    for split in ("unseen", "seen_test"):
        print(f"\n{split} classes, class level, mean +- std over seeds {seeds}")
        print(format_table(header, summarise(runs, split, "class")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": seeds, "overrides": args.set, "runs": runs}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
