"""Scaling of the hierarchical losses: forward + backward time for N = 32 ... 4,096 samples.

Inputs (as the official DeepFashion setup): N samples x V = 2 views, D = 128, four label
columns `[category, product, variation, image id]` with 4 images per variation, 2
variations per product, 4 products per category. For each N: `jit(value_and_grad)` of the
himl loss, compile time apart, median of >= `--repeats` steady-state calls. The growth
factor per doubling of N is printed (an O(N^2) loss should approach 4).

With `--official PATH` (a checkout of salesforce/hierarchicalContrastiveLearning; needs
torch) the official `HMLC` loss is timed in the same process on the same inputs, forward
+ backward, its calls alternating with himl's (so a slow spell of a shared machine slows
both alike), and both values are recorded (reference mode only: they agree to ~1e-7).

`--products` also times the `[R, D] x [D, R]` logit product alone (R = N * V), in JAX as
the loss computes it (`class_lse.map_rows`, the default CPU blocks) and in torch (one
`matmul`), to show how much of each step is matrix products. Any exact forward + backward
needs the multiply-adds of 1.5 such products (half the symmetric logits, and the gradient
`W z` with a dense `W`), and that is what himl's default CPU step runs (the upper blocks of
the logits, kept for the backward pass; `W z` from the upper blocks and their transposes),
so `himl_product_share = 1.5 * product_ms / himl_ms` and `speedup_bound = official_ms /
(1.5 * product_ms)` bounds the speedup any implementation could reach at this
matrix-product speed. The official code runs three (forward, and the two input gradients
of its level-1 product; its later levels are 16x and 64x smaller).

  python experiments/bench_hierarchical.py --official ~/src/hierarchicalContrastiveLearning \\
      --torch-threads 2 --out experiments/results/bench_hierarchical_cpu.json
  python experiments/bench_hierarchical.py --sizes 1024 4096 --chunk-size 512

On a shared, loaded machine wall-clock ratios swing by 2-10x from run to run (torch's
thread barriers stall when a core is taken away). `--single-thread --clock cpu` times the
CPU seconds of both codes on one CPU (the process is pinned to it): their work, nearly
independent of the load.

Both codes' times depend on the C allocator: glibc maps every allocation above 32 MiB
afresh, so a step whose workspace is larger pays a page fault per 4 KiB it touches, each
call (about 2 us apiece on the VM the stored results come from). The official code
allocates far more, so raising the threshold (`MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=4294967296` in the environment) speeds it up more than himl and
lowers the ratio; the JSON records these variables (`meta.malloc_env`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

from himl.benchmarking import CLOCKS, alternating_call_times, run_on_one_cpu  # no JAX

if "--single-thread" in sys.argv:  # before jax is imported (see `run_on_one_cpu`)
    run_on_one_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from himl.distances import dot_similarity  # noqa: E402
from himl.losses import hicone, himulcon, himulcone  # noqa: E402
from himl.losses.class_lse import block_rows, map_rows  # noqa: E402

# Logit-sized products in himl's default CPU step, and in any exact one; in the official
# code's step (see the top).
HIML_PRODUCTS = 1.5
OFFICIAL_PRODUCTS = 3
LOSSES = {"himulcon": himulcon, "hicone": hicone, "himulcone": himulcone}
# The official HMLC's `loss_type` for each loss (its training script uses torch.exp).
OFFICIAL_TYPES = {"himulcon": "hmc", "hicone": "hce", "himulcone": "hmce"}
DEFAULT_SIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def hierarchical_batch(n: int, dim: int, views: int = 2, seed: int = 0):
    """`x [n, views, dim]` float32 and labels `[n, 4]` int32 (coarsest column first)."""
    rng = np.random.default_rng(seed)
    variation = rng.permutation(n) // 4
    product = variation // 2
    category = product // 4
    labels = np.stack([category, product, variation, np.arange(n)], axis=1).astype(np.int32)
    return rng.normal(size=(n, views, dim)).astype(np.float32), labels


def load_official(path: str):
    """The `HMLC` class from `losses/losses.py` of a checkout of the official code."""
    file = Path(path).expanduser() / "losses" / "losses.py"
    if not file.is_file():
        raise SystemExit(f"--official: {file} not found (give the repository root)")
    spec = importlib.util.spec_from_file_location("official_hmlc_losses", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HMLC


clock = CLOCKS["wall"]  # `--clock`


def call_times(fn, repeats, budget_s):
    """`(median s, min s, rounds)` of `fn()` on `--clock`: `alternating_call_times` of `fn`
    alone."""
    (timing,) = alternating_call_times([fn], repeats, budget_s, clock=clock)
    return timing


def official_step(hmlc_cls, loss, x, y, temperature):
    """`step()`: one forward + backward of the official HMLC on `x`, `y`; returns the value."""
    import torch
    import torch.nn.functional as F

    criterion = hmlc_cls(
        temperature=temperature, layer_penalty=torch.exp, loss_type=OFFICIAL_TYPES[loss]
    )
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.long)

    def step():
        xt.grad = None
        value = criterion(F.normalize(xt, dim=2), yt)
        value.backward()
        return float(value.detach())

    return step


def time_products(x, repeats, budget_s, with_torch):
    """Milliseconds of one `[R, D] x [D, R]` logit product: JAX (as the loss blocks it), torch.

    Each JAX block is reduced to its row maxima while in cache (as the loss does), so the
    time is not that of writing `[R, R]` floats to memory.
    """
    z = jnp.asarray(x.reshape(-1, x.shape[-1]))
    r = z.shape[0]

    def block(rows, zi):
        return jnp.max(dot_similarity(zi, z), axis=1)

    product = jax.jit(lambda z: map_rows(block, r, block_rows(None, r), z))
    out = {"product_ms": call_times(lambda: jax.block_until_ready(product(z)), repeats,
                                    budget_s)[0] * 1e3}  # fmt: skip
    if with_torch:
        import torch

        zt = torch.tensor(np.asarray(z))
        seconds = call_times(lambda: torch.matmul(zt, zt.T), repeats, budget_s)[0]
        out["official_product_ms"] = seconds * 1e3
    return out


def bench(args, size, official):
    x, y = hierarchical_batch(size, args.dim, args.views)
    fn = functools.partial(
        LOSSES[args.loss],
        temperature=args.temperature,
        mode=args.mode,
        chunk_size=args.chunk_size,
    )
    step = jax.jit(jax.value_and_grad(fn))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    t0 = time.perf_counter()
    compiled = step.lower(xj, yj).compile()
    row = {"N": size, "rows": size * args.views, "compile_s": time.perf_counter() - t0}
    value = float(jax.block_until_ready(compiled(xj, yj))[0])
    fns = [lambda: jax.block_until_ready(compiled(xj, yj))]
    if official is not None:  # timed in alternation with himl (`alternating_call_times`)
        fns.append(official_step(official, args.loss, x, y, args.temperature))
    timings = alternating_call_times(fns, args.repeats, args.budget_s, clock=clock)
    seconds, fastest, calls = timings[0]
    row.update(himl_ms=seconds * 1e3, himl_min_ms=fastest * 1e3, himl_calls=calls, value=value)
    if official is not None:
        ref = fns[1]()
        ref_s, ref_fastest, ref_calls = timings[1]
        row.update(official_value=ref, official_ms=ref_s * 1e3, official_calls=ref_calls)
        row["official_min_ms"] = ref_fastest * 1e3
        row["rel_diff"] = abs(value - ref) / max(abs(ref), 1e-30)
        row["speedup"] = ref_s / seconds
        row["speedup_of_min"] = ref_fastest / fastest
    if args.products:
        row.update(time_products(x, args.repeats, args.budget_s, official is not None))
        row["himl_product_share"] = HIML_PRODUCTS * row["product_ms"] / row["himl_ms"]
        if official is not None:
            row["official_product_share"] = (
                OFFICIAL_PRODUCTS * row["official_product_ms"] / row["official_ms"]
            )
            # No exact step needs fewer multiply-adds than 1.5 products (see the top).
            row["speedup_bound"] = row["official_ms"] / (HIML_PRODUCTS * row["product_ms"])
    return row


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES, help="N (samples)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--loss", choices=sorted(LOSSES), default="himulcone")
    p.add_argument("--mode", choices=["reference", "paper"], default="reference")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=30.0, help="timing budget per size")
    p.add_argument("--official", default=None, help="path of an official-code checkout")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--products", action="store_true", help="also time the logit product")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what is timed")
    p.add_argument("--single-thread", action="store_true", help="XLA and torch on one thread each")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.official is not None and args.mode != "reference":
        p.error("--official compares reference mode only")
    global clock
    clock = CLOCKS[args.clock]
    if args.single_thread:
        args.torch_threads = 1
    official = None if args.official is None else load_official(args.official)
    if official is not None and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, {args.loss} {args.mode}")
    print(f"{'N':>6s} {'compile s':>9s} {'himl ms':>9s} {'x prev':>6s} {'official ms':>11s}"
          f" {'x prev':>6s} {'speedup':>7s} {'rel diff':>8s}")  # fmt: skip
    rows = []
    for size in args.sizes:
        row = bench(args, size, official)
        if rows and rows[-1]["N"] * 2 == size:
            row["himl_growth"] = row["himl_ms"] / rows[-1]["himl_ms"]
            if "official_ms" in row:
                row["official_growth"] = row["official_ms"] / rows[-1]["official_ms"]
        rows.append(row)
        print(
            f"{size:6d} {row['compile_s']:9.2f} {row['himl_ms']:9.2f}"
            f" {_fmt(row.get('himl_growth'), '6.1f'):>6s}"
            f" {_fmt(row.get('official_ms'), '11.1f'):>11s}"
            f" {_fmt(row.get('official_growth'), '6.1f'):>6s}"
            f" {_fmt(row.get('speedup'), '7.1f'):>7s} {_fmt(row.get('rel_diff'), '8.1e'):>8s}"
            + f" (min: {row['himl_min_ms']:.2f} ms"
            + (
                f", official {row['official_min_ms']:.1f}, x{row['speedup_of_min']:.1f})"
                if "official_min_ms" in row
                else ")"
            )
            + (
                f" product ms {row['product_ms']:.2f} (himl share {row['himl_product_share']:.0%})"
                if "product_ms" in row
                else ""
            )
            + (
                f" torch product ms {row['official_product_ms']:.2f} (official share"
                f" {row['official_product_share']:.0%}, bound {row['speedup_bound']:.1f}x)"
                if "official_product_ms" in row
                else ""
            ),
            flush=True,
        )
    if args.out:
        meta = {
            "device": jax.devices()[0].device_kind,
            "jax": jax.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_after": os.getloadavg(),
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_affinity": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "malloc_env": {
                k: v
                for k, v in os.environ.items()
                if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"
            },
        }
        if official is not None:
            import torch

            meta.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
