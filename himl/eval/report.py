"""Plain-text tables of evaluation results."""

from __future__ import annotations


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns under a header and a rule."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def results_table(results_by_model: dict, level_names, ks) -> str:
    """One table per split: rows (model, level), columns Recall@K, MAP@R, NMI, AMI (in %).

    `results_by_model` is `{"untrained": {split: metrics}, "trained": {...}}` as returned
    by `himl.eval.evaluators.run_evaluators`. Every split any model has retrieval results
    for gets a table, in order of first appearance (one with a probe alone gets none); a
    model without that split (or level) gets rows of "-".
    """
    splits = list(dict.fromkeys(
        s for results in results_by_model.values() for s, metrics in results.items()
        if any(level in metrics for level in level_names)
    ))  # fmt: skip
    header = ["model", "level"] + [f"R@{k}" for k in ks] + ["MAP@R", "NMI", "AMI"]
    keys = [f"recall@{k}" for k in ks] + ["map@r", "nmi", "ami"]
    blocks = []
    for split in splits:
        rows, unmeasured = [], []
        for model_name, results in results_by_model.items():
            for level in level_names:
                m = results.get(split, {}).get(level, {})
                # "-" for a value that is absent (query->gallery has no clustering scores)
                # or None (a level with nothing to find: `none_where_nothing_found`)
                if 0 < m.get("num_queries", 0) == m.get("num_left_out") and level not in unmeasured:
                    unmeasured.append(level)
                rows.append([model_name, level] + [_percent(m.get(key)) for key in keys])
        first = next(r[split] for r in results_by_model.values() if split in r)
        notes = "".join(
            f"no query has an image of its {level} label to find: R@K and MAP@R not measured\n"
            for level in unmeasured
        ) + "".join(_count_notes(first, level_names, unmeasured))
        n = first.get("num_samples", "?")
        blocks.append(f"split {split!r} ({n} images)\n{format_table(header, rows)}\n{notes}")
    return "\n".join(blocks)


def _count_notes(results: dict, level_names, unmeasured) -> list[str]:
    """One line per level where some queries are counted apart (the counts depend on the
    labels alone, so one model's results say it for all): queries with nothing to find,
    and queries whose R is capped (`config.eval.max_r`)."""
    notes = []
    for level in level_names:
        m = results.get(level, {})
        queries, left_out = m.get("num_queries", 0), m.get("num_left_out", 0)
        if 0 < left_out < queries and level not in unmeasured:
            notes.append(
                f"{left_out} of {queries} queries have no image of their {level} label to "
                "find: R@K counts them as misses, P@1 and MAP@R leave them out\n"
            )
        if m.get("num_r_truncated"):
            notes.append(
                f"MAP@R at {level}: R capped at {m.get('r_cap', '?')} same-label images for "
                f"{m['num_r_truncated']} of {queries} queries (config.eval.max_r=0: exact)\n"
            )
    return notes


def results_by_model(summary: dict) -> dict:
    """`{"untrained": ..., "trained": ...}` (per split) of a himl-train metrics.json
    (`untrained` and `results`), for `results_table` and `probe_lines`; without
    "untrained" where it was not evaluated."""
    untrained = {"untrained": summary["untrained"]} if "untrained" in summary else {}
    return untrained | {"trained": summary["results"]}


def probe_lines(results_by_model: dict) -> list[str]:
    """One line per (model, split) with a linear-probe accuracy, e.g.
    "linear probe on 'unseen' (trained): accuracy 71.30"."""
    lines = []
    for model_name, results in results_by_model.items():
        for split, metrics in results.items():
            if "linear_probe" in metrics:
                accuracy = 100 * metrics["linear_probe"]["accuracy"]
                lines.append(f"linear probe on {split!r} ({model_name}): accuracy {accuracy:.2f}")
    return lines
