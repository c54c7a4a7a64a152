"""Forward + backward speed of every registered loss, against references in the same process.

For each loss of `himl.losses.LOSSES` and each (B, D): `jit(value_and_grad)` with respect to
the embeddings (and the loss's parameters, for entries that have any). Reported:
compile time (lower + compile, separately), and the median of >= `--repeats` steady-state
calls after warm-up (`jax.block_until_ready`). References in the same process: the slow
NumPy loop references of `tests/references/pair.py` (value only, B <= `--ref-max-batch`),
and pytorch-metric-learning (forward + backward, on torch's GPU when it sees one) when
`torch` and `pytorch_metric_learning` import, its calls alternating with himl's
(`himl.benchmarking.alternating_call_times`). Labels: 4 samples per class; hierarchical
losses get 3-level label rows `[B, 3]` and two views `[B, 2, D]`.

  python experiments/bench_losses.py --quick
  python experiments/bench_losses.py --batch-sizes 256 1024 --dims 128 512 --out bench.json

On a shared machine, `--single-thread --clock cpu` times the CPU seconds of both codes on
one pinned CPU (their work, nearly independent of other processes); two threads each on two
cores measured 1.7x to 7.2x for the same loss (normalized_softmax, B = 256) in two runs.
The stored runs (`experiments/results/bench_losses_*_vs_pml.json`): `--pml-only
--single-thread --clock cpu` at B = 256, D = 128, and at B = 1,024, D = 512 without
`ntxent` and `lifted_structure` (there PML's `NTXentLoss` and `LiftedStructureLoss` needed
more than this 24 GB machine has).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from himl.benchmarking import (
    CLOCKS,
    alternating_call_times,
    median_time,
    run_on_one_cpu,
    timed_against,
)

if "--single-thread" in sys.argv:  # before jax is imported (see `run_on_one_cpu`)
    run_on_one_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import repo_paths  # noqa: E402, F401  (puts tests/ on sys.path for `references`)
from references.pair import CLASSIC_REFS  # noqa: E402

from himl.losses import LOSSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn, repeats: int) -> tuple[float, int]:
    return median_time(fn, repeats, budget_s=30.0)[:2]


def _inputs(info, b: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cls = rng.permutation(b) // 4
    if info.labels == "hierarchical":
        x = rng.normal(size=(b, 2, d)).astype(np.float32)
        y = np.stack([cls // 8, cls // 2, cls], axis=1).astype(np.int32)
        num_classes = int(cls.max()) + 1
    else:
        x = rng.normal(size=(b, d)).astype(np.float32)
        y = cls.astype(np.int32)
        num_classes = int(cls.max()) + 1
    return x, y, num_classes


def _pml_factories():
    try:
        import torch  # noqa: F401
        from pytorch_metric_learning import losses as pl
    except ImportError:
        return None
    return {
        "supcon": lambda c, d: pl.SupConLoss(),
        "contrastive": lambda c, d: pl.ContrastiveLoss(),
        "triplet_margin": lambda c, d: pl.TripletMarginLoss(),
        "multi_similarity": lambda c, d: pl.MultiSimilarityLoss(),
        "ntxent": lambda c, d: pl.NTXentLoss(),
        "proxy_anchor": lambda c, d: pl.ProxyAnchorLoss(c, d),
        "proxy_nca": lambda c, d: pl.ProxyNCALoss(c, d),
        "normalized_softmax": lambda c, d: pl.NormalizedSoftmaxLoss(c, d),
        "npairs": lambda c, d: pl.NPairsLoss(),
        "lifted_structure": lambda c, d: pl.LiftedStructureLoss(),
    }


def pml_step(factory, x, y, num_classes):
    """`(step, device)`: `step()` runs one PML forward + backward on `x`, `y` and waits for
    it; on the GPU when torch sees one (compared with himl on the same kind of device)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss_fn = factory(num_classes, x.shape[1]).to(device)
    xt = torch.tensor(x, requires_grad=True, device=device)
    yt = torch.tensor(y, dtype=torch.long, device=device)

    def step():
        xt.grad = None
        loss_fn.zero_grad()
        loss_fn(xt, yt).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return step, device


def bench_one(name, b, d, args, refs, pml):
    info = LOSSES[name]
    x, y, num_classes = _inputs(info, b, d)
    variables = info.init(jax.random.key(0), num_classes=num_classes, embedding_dim=d)
    params = variables["params"]

    def loss(x, params, y):
        return info.apply({**variables, "params": params}, x, y)[0]

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    t0 = time.perf_counter()
    compiled = step.lower(xj, params, yj).compile()
    compile_s = time.perf_counter() - t0
    clock = CLOCKS[args.clock]
    himl_call = lambda: jax.block_until_ready(compiled(xj, params, yj))  # noqa: E731
    with_pml = pml is not None and name in pml and info.labels == "flat" and not args.no_pml
    if with_pml:
        pml_call, pml_device = pml_step(pml[name], x, y, num_classes)
        (himl_s, _, n), (pml_s, _, pn) = timed_against(
            himl_call, pml_call, args.repeats, clock, args.pml_max_s
        )
    else:
        ((himl_s, _, n),) = alternating_call_times([himl_call], args.repeats, 30.0, clock)
    row = {"loss": name, "B": b, "D": d, "compile_s": compile_s, "himl_ms": himl_s * 1e3}
    row["himl_calls"] = n
    if name in refs and b <= args.ref_max_batch and info.labels == "flat":
        ref_s, _ = _median_time(lambda: refs[name](x, y), 1)
        row["numpy_ref_ms"] = ref_s * 1e3
    if with_pml:
        row["pml_ms"], row["pml_calls"], row["pml_device"] = pml_s * 1e3, pn, pml_device
        row["speedup_vs_pml"] = pml_s / himl_s
    return row


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, int | float) else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    p.add_argument("--losses", nargs="+", default=None, help="names from LOSSES (default all)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--ref-max-batch", type=int, default=32)
    p.add_argument("--no-pml", action="store_true")
    p.add_argument("--pml-only", action="store_true", help="only losses PML also has")
    p.add_argument("--quick", action="store_true", help="B=32, D=16, 3 calls")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--single-thread",
        action="store_true",
        help="both codes on one pinned CPU, one thread each (XLA and torch)",
    )
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what is timed")
    p.add_argument(
        "--pml-max-s",
        type=float,
        default=10.0,
        help="a PML step slower than this is timed by one call",
    )
    args = p.parse_args(argv)
    if args.single_thread:
        args.torch_threads = 1
    if args.quick:
        args.batch_sizes, args.dims, args.repeats = [32], [16], 3
    names = args.losses or list(LOSSES)
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        p.error(f"unknown losses {unknown}; valid: {sorted(LOSSES)}")
    refs = CLASSIC_REFS
    pml = None if args.no_pml else _pml_factories()
    if pml is not None and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.pml_only:
        names = [n for n in names if pml is not None and n in pml]
    rows = []
    header = f"{'loss':18s} {'B':>6s} {'D':>4s} {'compile s':>9s} {'himl ms':>9s}"
    header += f" {'numpy ms':>9s} {'PML ms':>9s} {'xPML':>6s}"
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(header)
    for b in args.batch_sizes:
        for d in args.dims:
            for name in names:
                try:
                    row = bench_one(name, b, d, args, refs, pml)
                except Exception as e:  # keep going (e.g. out of memory at large B)
                    row = {"loss": name, "B": b, "D": d, "error": f"{type(e).__name__}: {e}"}
                    print(f"{name:18s} {b:6d} {d:4d}  error: {row['error'][:80]}")
                    rows.append(row)
                    continue
                rows.append(row)
                print(
                    f"{name:18s} {b:6d} {d:4d} {row['compile_s']:9.2f} {row['himl_ms']:9.2f}"
                    f" {_fmt(row.get('numpy_ref_ms'), '9.1f'):>9s}"
                    f" {_fmt(row.get('pml_ms'), '9.2f'):>9s}"
                    f" {_fmt(row.get('speedup_vs_pml'), '6.1f'):>6s}",
                    flush=True,
                )
    if args.out:
        meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__}
        meta.update(
            torch_threads=args.torch_threads,
            single_thread=args.single_thread,
            clock=args.clock,
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            load_average_after=os.getloadavg(),
        )
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
