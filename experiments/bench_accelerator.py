"""The accelerator benchmark of `performance.md`, on whatever device JAX runs on.

Sections (each selectable with `--sections`), forward + backward unless said otherwise,
steady-state medians of `--repeats` calls after a warm-up call (`jax.block_until_ready`);
compile time (lower + compile) reported apart:

- `losses`: every registered loss at B = `--batches` (D = `--dim`, 4 samples per class;
  hierarchical losses: B/2 samples x 2 views, 3 label columns), against
  pytorch-metric-learning forward + backward in the same process when `torch` and
  `pytorch_metric_learning` import (the PML-equivalent losses; skipped cleanly otherwise),
  on torch's GPU when it sees one, the two codes' calls alternating (short calls in
  bursts, `himl.benchmarking.alternating_call_times`); a PML step slower than
  `--pml-max-s` is timed by its one warm-up call (`himl.benchmarking.timed_against`).
  Losses taking `chunk_size=` (see `default_hparams`) get `--chunk-size` when B exceeds it.
- `global_batch`: SupCon and HiMulConE (D = `--global-dim`, embeddings of
  `--global-dtype`) at B = `--start-batch`,
  doubling up to `--max-batch` (1,048,576) or the first failure (out of memory) or a call
  slower than `--max-step-s`; with the time of the bf16 matrix products of the same shapes
  (`S_c = X_c X^T`, `S_c X`, `S_c^T X_c` over row blocks of `--chunk-size`: 6 B^2 D FLOPs,
  what a forward + backward of a similarity loss must multiply).
- `knn`: exact kNN Recall@K / MAP@R over `--knn-n` x `--knn-d` synthetic clustered
  embeddings (`himl.eval.retrieval_metrics`, sharded over every device when there are
  several), and `himl.eval.knn` alone against an exact blocked NumPy search of the same data.
- `resnet`: the ResNet-50 train step (`himl.train.state.train_step`, SupCon, AdamW) in
  images/s at `--resnet-batch` x `--resnet-size` px, float32 and bfloat16 (mixed precision).

  python experiments/bench_accelerator.py --out experiments/results/bench_accelerator_h100.json
  python experiments/bench_accelerator.py --cpu-sized --out cpu.json   # minutes on 2 cores

`--cpu-sized` shrinks every size so that the whole run finishes in minutes on 2 CPU cores;
each size flag still overrides it. The JSON records the device, the sizes and every
measurement; nothing is extrapolated. It is rewritten after every measurement, so a run
stopped from outside keeps what it measured; `--deadline-s S` starts no new measurement
after S seconds of wall time (the rows it leaves out say `"skipped": "deadline"`), so that
a run on a machine lent for a fixed time ends cleanly with every section it reached, e.g.

  python experiments/bench_accelerator.py --deadline-s 500 --out $OUT/bench_accelerator_h100.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

# PML runs on the same GPU in this process: JAX then allocates as it goes instead of taking
# 75% of the device's memory up front, which would leave torch too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from himl.benchmarking import CLOCKS, run_on_one_cpu  # noqa: E402  (no JAX)

if "--single-thread" in sys.argv:  # before jax is imported (see `run_on_one_cpu`)
    run_on_one_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' helpers

from bench_knn import make_data, numpy_knn  # noqa: E402
from bench_losses import _inputs, _pml_factories, pml_step  # noqa: E402

from himl.benchmarking import alternating_call_times, median_time, timed_against  # noqa: E402
from himl.eval import knn, retrieval_metrics  # noqa: E402
from himl.eval.knn import search_mesh  # noqa: E402
from himl.losses import LOSSES, default_hparams, get_loss  # noqa: E402

SECTIONS = ("losses", "global_batch", "knn", "resnet")
FULL = dict(
    batches=[512, 2048, 8192],
    dim=512,
    start_batch=4096,
    max_batch=1 << 20,
    global_dim=128,
    chunk_size=4096,
    knn_n=1_000_000,
    knn_d=512,
    resnet_batch=256,
    resnet_size=224,
    repeats=10,
)
CPU_SIZED = dict(
    batches=[128, 512],
    dim=128,
    start_batch=1024,
    max_batch=8192,
    global_dim=128,
    chunk_size=1024,
    knn_n=20_000,
    knn_d=128,
    resnet_batch=8,
    resnet_size=64,
    repeats=5,
)
# performance.md targets, per platform ("gpu" targets are for one H100).
TARGETS = {
    "gpu": {"x_pml": 10.0, "global_vs_matmul": 3.0, "knn_1m_s": 3.0, "resnet_bf16_img_s": 3957},
    "cpu": {"x_pml": 2.0},
}


def _timed(fn, repeats, budget_s):
    """`{"ms": median, "calls": n, "first_call_s": ...}` (first call timed apart)."""
    med, n, first = median_time(fn, repeats, budget_s=budget_s)
    return {"ms": med * 1e3, "calls": n, "first_call_s": first}


def _time_compiled(compiled, call_args, repeats, budget_s):
    """`_timed` of `compiled(*call_args)`, blocking on the result."""
    return _timed(lambda: jax.block_until_ready(compiled(*call_args)), repeats, budget_s)


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


class Progress:
    """The run's results, written to `out` (when given) after every measurement, and its
    wall-clock deadline (`deadline_s` after construction; None: no deadline)."""

    def __init__(self, results: dict, out: str | None, deadline_s: float | None):
        self.results, self.out = results, out
        self.deadline = None if deadline_s is None else time.perf_counter() + deadline_s

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def record(self, section: str, value) -> None:
        """`results[section] = value` (the section's rows so far), then the JSON rewritten."""
        self.results[section] = value
        if self.out:
            Path(self.out).write_text(json.dumps(self.results, indent=1, default=str))


SKIPPED = {"skipped": "deadline"}


def _chunk_kwargs(name: str, n: int, chunk_size: int) -> dict:
    """`{"chunk_size": c}` when the loss takes one and the batch is larger; else dense."""
    return (
        {"chunk_size": chunk_size}
        if "chunk_size" in default_hparams(name) and n > chunk_size
        else {}
    )


# ----------------------------------------------------------------------------- losses
def bench_losses(args, platform_kind, progress):
    pml = None if args.no_pml else _pml_factories()
    clock = CLOCKS[args.clock]
    rows = []
    for b in args.batches:
        for name, info in LOSSES.items():
            row = {"loss": name, "B": b, "D": args.dim}
            if progress.out_of_time():
                rows.append({**row, **SKIPPED})
                continue
            try:
                x, y, num_classes = _inputs(info, b if info.labels == "flat" else b // 2, args.dim)
                variables = info.init(
                    jax.random.key(0), num_classes=num_classes, embedding_dim=args.dim
                )
                params = variables["params"]
                kw = _chunk_kwargs(name, b, args.chunk_size)
                row.update(kw)

                def loss(x, params, y, kw=kw, info=info, variables=variables):
                    return info.apply({**variables, "params": params}, x, y, **kw)[0]

                xj, yj = jnp.asarray(x), jnp.asarray(y)
                step, row["compile_s"] = _compile(
                    jax.value_and_grad(loss, argnums=(0, 1)), xj, params, yj
                )
                himl_call = lambda s=step, a=(xj, params, yj): jax.block_until_ready(s(*a))  # noqa: E731
                if pml is not None and name in pml and info.labels == "flat":
                    pml_call, row["pml_device"] = pml_step(pml[name], x, y, num_classes)
                    # Alternating calls (short ones in bursts): a slow spell hits both.
                    timings = timed_against(
                        himl_call, pml_call, args.repeats, clock, ref_max_s=args.pml_max_s
                    )
                else:
                    timings = alternating_call_times([himl_call], args.repeats, 30, clock)
                row["himl_ms"], row["himl_calls"] = timings[0][0] * 1e3, timings[0][2]
                if len(timings) > 1:
                    row["pml_ms"], row["pml_calls"] = timings[1][0] * 1e3, timings[1][2]
                    row["x_pml"] = row["pml_ms"] / row["himl_ms"]
                    target = TARGETS.get(platform_kind, {}).get("x_pml")
                    if target is not None:
                        row["target_x_pml"], row["meets_target"] = target, row["x_pml"] >= target
            except Exception as e:  # out of memory at large B: record and go on
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            progress.record("losses", rows)
            _print_row(row, ("loss", "B", "compile_s", "himl_ms", "pml_ms", "x_pml", "error"))
    if pml is not None:  # give torch's cached GPU memory back to the sections after this
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------- global batch
def _matmul_reference(x, chunk):
    """The bf16 matrix products of a row-blocked similarity loss's forward + backward:
    per block `S_c = X_c X^T [c, N]`, `S_c X [c, D]`, `S_c^T X_c [N, D]` (f32 accumulation)."""
    n, d = x.shape
    xb = x.reshape(n // chunk, chunk, d)

    def body(acc, xc):
        s = jnp.einsum("cd,nd->cn", xc, x, preferred_element_type=jnp.float32).astype(x.dtype)
        rows = jnp.einsum("cn,nd->cd", s, x, preferred_element_type=jnp.float32)
        cols = jnp.einsum("cn,cd->nd", s, xc, preferred_element_type=jnp.float32)
        return acc + cols, jnp.sum(rows)

    acc, sums = jax.lax.scan(body, jnp.zeros((n, d), jnp.float32), xb)
    return jnp.sum(acc) + jnp.sum(sums)


def _global_inputs(name, n, d, dtype):
    key = jax.random.key(0)
    y = jnp.arange(n, dtype=jnp.int32) // 4
    if LOSSES[name].labels == "hierarchical":  # n/2 samples x 2 views, 3 label columns
        cls = y[: n // 2]
        x = jax.random.normal(key, (n // 2, 2, d), dtype)
        return x, jnp.stack([cls // 8, cls // 2, cls], 1)
    return jax.random.normal(key, (n, d), dtype), y


def bench_global_batch(args, platform_kind, progress):
    rows = []
    for name in ("supcon", "himulcone"):
        b = args.start_batch
        while b <= args.max_batch:
            row = {"loss": name, "B": b, "D": args.global_dim, "input_dtype": args.global_dtype}
            if progress.out_of_time():
                rows.append({**row, **SKIPPED})
                break
            kw = _chunk_kwargs(name, b, args.chunk_size)
            row.update(kw)
            if not kw:
                has_chunks = "chunk_size" in default_hparams(name)
                row["path"] = "dense" + ("" if has_chunks else " (no chunk_size hyperparameter)")
            try:
                x, y = _global_inputs(name, b, args.global_dim, jnp.dtype(args.global_dtype))
                fn = get_loss(name)
                step, row["compile_s"] = _compile(
                    jax.value_and_grad(lambda x, y, fn=fn, kw=kw: fn(x, y, **kw)), x, y
                )
                t = _time_compiled(step, (x, y), args.repeats, 60)
                row["loss_ms"], row["loss_calls"] = t["ms"], t["calls"]
                chunk = min(args.chunk_size, b)
                xm = jax.random.normal(jax.random.key(1), (b, args.global_dim), jnp.bfloat16)
                mm, row["matmul_compile_s"] = _compile(
                    functools.partial(_matmul_reference, chunk=chunk), xm
                )
                t = _time_compiled(mm, (xm,), args.repeats, 60)
                row["bf16_matmul_ms"] = t["ms"]
                row["matmul_tflops"] = 6 * b * b * args.global_dim / (t["ms"] * 1e-3) / 1e12
                row["loss_vs_matmul"] = row["loss_ms"] / row["bf16_matmul_ms"]
                if platform_kind == "gpu":
                    target = TARGETS["gpu"]["global_vs_matmul"]
                    row["meets_target"] = row["loss_vs_matmul"] <= target
                del x, y, xm
            except Exception as e:  # the first size that does not fit ends this loss
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            progress.record("global_batch", rows)
            _print_row(row, ("loss", "B", "loss_ms", "bf16_matmul_ms", "loss_vs_matmul", "error"))
            if "error" in row or row["loss_ms"] / 1e3 > args.max_step_s:
                break
            b *= 2
        fitted = [r["B"] for r in rows if r["loss"] == name and "loss_ms" in r]
        rows.append({"loss": name, "largest_B_run": max(fitted) if fitted else None})
        progress.record("global_batch", rows)
    return rows


# --------------------------------------------------------------------------------- knn
def bench_knn(args, platform_kind, progress):
    out = {"N": args.knn_n, "D": args.knn_d, "devices": jax.device_count(), "k_search": 8}
    if progress.out_of_time():
        return {**out, **SKIPPED}
    x, labels = make_data(args.knn_n, args.knn_d)
    mesh = search_mesh()
    t0 = time.perf_counter()
    metrics = retrieval_metrics(x, labels, ks=(1, 2, 4, 8), mesh=mesh)
    out["metrics_first_call_s"] = time.perf_counter() - t0
    t = _timed(lambda: retrieval_metrics(x, labels, ks=(1, 2, 4, 8), mesh=mesh), args.repeats, 120)
    out["metrics_s"], out["metrics_calls"] = t["ms"] / 1e3, t["calls"]
    out["recall"] = {k: v for k, v in metrics.items() if k.startswith("recall@")}
    out["map@r"], out["k_metrics"] = metrics["map@r"], metrics["k"]
    progress.record("knn", out)
    t = _timed(lambda: knn(x, k=8, mesh=mesh)[0], args.repeats, 120)
    out["knn_s"], out["knn_first_call_s"] = t["ms"] / 1e3, t["first_call_s"]
    progress.record("knn", out)
    if args.knn_numpy and progress.out_of_time():
        out["numpy_knn"] = SKIPPED["skipped"]
    elif args.knn_numpy:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        t = _timed(lambda: numpy_knn(xn, 8), min(args.repeats, 3), 120)
        out["numpy_knn_s"] = t["ms"] / 1e3
        out["numpy_over_himl"] = out["numpy_knn_s"] / out["knn_s"]
        if platform_kind == "cpu":
            out["meets_target"] = out["knn_s"] <= out["numpy_knn_s"]
    if platform_kind == "gpu" and args.knn_n >= 1_000_000:
        out["meets_target"] = out["metrics_s"] < TARGETS["gpu"]["knn_1m_s"]
    _print_row(out, ("N", "D", "metrics_s", "knn_s", "numpy_knn_s", "recall"))
    return out


# ------------------------------------------------------------------------------ resnet
def bench_resnet(args, platform_kind, progress):
    import ml_collections

    from himl.configs import default
    from himl.models.resnet import ResNet
    from himl.train.objective import Objective
    from himl.train.optim import build_optimizer
    from himl.train.state import create_state, train_step

    supcon = get_loss("supcon")
    objective = Objective(
        name="supcon",
        init=lambda rng, dim: {"params": {}, "batch_stats": {}},
        apply=lambda v, emb, labels, train=True: (supcon(emb, labels[:, 0]), v["batch_stats"]),
    )
    tx = build_optimizer(ml_collections.ConfigDict(default.get_config().optimizer), 1000)
    b, size = args.resnet_batch, args.resnet_size
    rng = np.random.default_rng(0)
    batch = {
        "images": jnp.asarray(rng.uniform(size=(b, 1, size, size, 3)).astype(np.float32)),
        "labels": jnp.asarray((np.arange(b) // 4)[:, None].astype(np.int32)),
    }
    rows = []
    for dtype in ("float32", "bfloat16"):
        row = {"dtype": dtype, "B": b, "image_size": size}
        if progress.out_of_time():
            rows.append({**row, **SKIPPED})
            continue
        model = ResNet(embedding_dim=512, dtype=jnp.dtype(dtype))
        state = create_state(jax.random.key(0), model, objective, tx, (size, size, 3))
        step_fn = functools.partial(train_step, model=model, objective=objective, tx=tx)
        try:
            step, row["compile_s"] = _compile(step_fn, state, batch)
            t = _time_compiled(step, (state, batch), args.repeats, 120)
            row["step_ms"], row["calls"] = t["ms"], t["calls"]
            row["images_per_s"] = b / (t["ms"] * 1e-3)
            if platform_kind == "gpu" and dtype == "bfloat16" and (b, size) == (256, 224):
                row["meets_target"] = row["images_per_s"] >= TARGETS["gpu"]["resnet_bf16_img_s"]
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        progress.record("resnet", rows)
        _print_row(row, ("dtype", "B", "image_size", "compile_s", "step_ms", "images_per_s"))
    return rows


def _print_row(row, keys):
    parts = []
    for k in keys:
        v = row.get(k)
        if v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    print("  " + "  ".join(parts), flush=True)


def _meta(args):
    dev = jax.devices()[0]
    kind = "gpu" if dev.platform in ("gpu", "cuda", "rocm") else dev.platform
    meta = {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "args": vars(args),
    }
    try:
        import pytorch_metric_learning
        import torch

        meta["torch"], meta["pml"] = torch.__version__, pytorch_metric_learning.__version__
        meta["torch_threads"] = torch.get_num_threads()
    except ImportError:
        meta["pml"] = None
    return meta, kind


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--cpu-sized", action="store_true", help="sizes that finish on 2 CPU cores")
    p.add_argument("--batches", type=int, nargs="+", help="B of the losses section")
    p.add_argument("--dim", type=int, help="D of the losses section")
    p.add_argument("--start-batch", type=int)
    p.add_argument("--max-batch", type=int, help="largest global batch tried")
    p.add_argument("--global-dim", type=int)
    p.add_argument(
        "--global-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype of the embeddings fed to the global-batch losses (bf16: bf16 products)",
    )
    p.add_argument("--chunk-size", type=int, help="rows per block of chunked losses")
    p.add_argument("--max-step-s", type=float, default=120.0, help="stop doubling B beyond")
    p.add_argument("--knn-n", type=int)
    p.add_argument("--knn-d", type=int)
    p.add_argument("--knn-numpy", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--resnet-batch", type=int)
    p.add_argument("--resnet-size", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--no-pml", action="store_true")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for PML (--cpu-sized: 1; OpenMP spin-waits collapse on a "
        "loaded CPU)",
    )
    p.add_argument(
        "--pml-max-s",
        type=float,
        default=10.0,
        help="a PML step slower than this is timed by one call (keeps a run bounded)",
    )
    p.add_argument(
        "--single-thread",
        action="store_true",
        help="one pinned CPU, one thread each for XLA and torch (a fair CPU comparison)",
    )
    p.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="what the losses section times"
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no new measurement after this many seconds of wall time",
    )
    p.add_argument("--note", default="", help="free text stored in the JSON")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    for key, value in (CPU_SIZED if args.cpu_sized else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.single_thread or (args.torch_threads is None and args.cpu_sized):
        args.torch_threads = 1
    if args.torch_threads and not args.no_pml:
        try:
            import torch

            torch.set_num_threads(args.torch_threads)
        except ImportError:
            pass
    if args.knn_numpy is None:  # the NumPy reference is O(N^2 D) on the host
        args.knn_numpy = args.knn_n <= 200_000
    meta, kind = _meta(args)
    meta["note"] = args.note
    print(f"{meta['device_kind']} x {meta['device_count']} ({meta['platform']}), jax {meta['jax']}")
    results = {"meta": meta}
    progress = Progress(results, args.out, args.deadline_s)
    runners = {
        "losses": bench_losses,
        "global_batch": bench_global_batch,
        "knn": bench_knn,
        "resnet": bench_resnet,
    }
    for section in args.sections:
        print(f"[{section}]", flush=True)
        t0 = time.perf_counter()
        value = runners[section](args, kind, progress)
        results.setdefault("section_wall_s", {})[section] = time.perf_counter() - t0
        progress.record(section, value)
    return results


if __name__ == "__main__":
    main()
