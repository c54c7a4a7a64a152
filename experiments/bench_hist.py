"""Forward + backward speed of the HIST loss head (distributions + hypergraph + HGNN).

For each (B, C): `jit(value_and_grad)` of `himl.losses.hist` with respect to the
embeddings `[B, D]`, the class distributions `[C, D]` and the HGNN parameters (hidden 512,
official default), HGNN batch norm in train mode. Reference, timed the same way in the same
process: a jitted JAX transcription of the official algorithm's data flow (ljin0429/HIST
`code/hist.py`): the `[B, C, D]` broadcast of `pairwise_mahalanobis`, softmax then log, and
`G` as the chain product of dense diagonal matrices `Dv^-1/2 H W De^-1 H^T Dv^-1/2`.
Compile time is reported separately; steady state is the median of >= `--repeats` calls
after warm-up (`jax.block_until_ready`). Labels: 4 samples per class, classes drawn from C.

  python experiments/bench_hist.py --quick
  python experiments/bench_hist.py --batch-sizes 32 128 512 --classes 100 1000 11318
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from himl.benchmarking import median_time
from himl.losses.hist import hist, init_hist
from himl.models.hgnn import HGNN

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn, repeats: int) -> tuple[float, int]:
    return median_time(fn, repeats, budget_s=20.0)[:2]


def official_style_loss(x, y, cols, means, log_vars, hgnn, *, tau=32.0, alpha=0.9, hidden=512):
    """The official data flow, kept naive on purpose; `cols` are the classes present in the
    batch (found on the host, as the official `torch.nonzero`), H has only those columns."""
    c = means.shape[0]
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    mn = means / jnp.maximum(jnp.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
    diff = xn[:, None, :] - mn[None, :, :]  # [B, C, D]
    d2 = jnp.sum(jnp.square(diff) / jnp.exp(jax.nn.relu6(log_vars))[None], axis=-1)
    one_hot = jax.nn.one_hot(y, c)
    prob = jnp.sum(jax.nn.softmax(-tau * d2, axis=1) * one_hot, axis=1)
    l_d = jnp.mean(-jnp.log(prob))
    oh = one_hot[:, cols]
    h = oh + jnp.exp(-alpha * d2[:, cols]) * (1 - oh)
    dv, de = h.sum(1), h.sum(0)
    inv_dv = jnp.diag(dv**-0.5)
    g = inv_dv @ h @ jnp.eye(len(cols)) @ jnp.diag(1.0 / de) @ h.T @ inv_dv
    logits, _ = HGNN(num_classes=c, hidden=hidden).apply(
        {"params": hgnn}, x, g, train=True, mutable=["batch_stats"]
    )
    ce = jnp.mean(-jnp.sum(jax.nn.log_softmax(logits) * one_hot, axis=1))
    return l_d + ce


def bench_one(b, c, d, hidden, repeats, with_ref):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, d)).astype(np.float32))
    y = jnp.asarray(rng.choice(c, max(b // 4, 1), replace=c < b // 4).repeat(4)[:b], jnp.int32)
    variables = init_hist(jax.random.key(0), num_classes=c, embedding_dim=d, hgnn_hidden=hidden)
    params = variables["params"]
    row = {"B": b, "C": c, "D": d, "hidden": hidden}
    fns = {"himl": lambda x, p, y: hist(x, y, {**variables, "params": p})[0]}
    if with_ref:
        cols = np.unique(np.asarray(y))
        fns["ref"] = lambda x, p, y: official_style_loss(x, y, cols, **p, hidden=hidden)
    for name, fn in fns.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        t0 = time.perf_counter()
        compiled = step.lower(x, params, y).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - t0
        jax.block_until_ready(compiled(x, params, y))
        sec, n = _median_time(lambda c=compiled: jax.block_until_ready(c(x, params, y)), repeats)
        row[f"{name}_ms"], row[f"{name}_calls"] = sec * 1e3, n
    if with_ref:
        row["speedup_vs_ref"] = row["ref_ms"] / row["himl_ms"]
    return row


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, int | float) else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 11318])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-ref", action="store_true", help="skip the official-style reference")
    p.add_argument("--ref-max-bcd", type=float, default=3e8, help="skip ref when B*C*D is larger")
    p.add_argument("--quick", action="store_true", help="B in (32, 128), C in (100, 1000)")
    p.add_argument(
        "--out",
        default=None,
        help="default experiments/results/bench_hist.json (--quick: bench_hist_quick.json, "
        "so a check never replaces the recorded table)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.classes, args.repeats = [32, 128], [100, 1000], 5
    name = "bench_hist_quick.json" if args.quick else "bench_hist.json"
    args.out = args.out or str(ROOT / "experiments" / "results" / name)
    rows = []
    header = f"{'B':>5} {'C':>6} {'himl ms':>9} {'ref ms':>9} {'x ref':>6} {'compile s':>9}"
    print(f"device: {jax.devices()[0].device_kind}, D={args.dim}, hidden={args.hidden}")
    print(header)
    for b in args.batch_sizes:
        for c in args.classes:
            with_ref = not args.no_ref and b * c * args.dim <= args.ref_max_bcd
            row = bench_one(b, c, args.dim, args.hidden, args.repeats, with_ref)
            rows.append(row)
            print(
                f"{b:>5} {c:>6} {_fmt(row['himl_ms'], '9.2f')} {_fmt(row.get('ref_ms'), '9.2f')} "
                f"{_fmt(row.get('speedup_vs_ref'), '6.2f')} {_fmt(row['himl_compile_s'], '9.2f')}",
                flush=True,
            )
    out = {
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
