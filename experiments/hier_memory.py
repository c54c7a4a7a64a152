"""Peak memory of one memory-bounded hierarchical-loss step (forward + backward).

Runs `jit(value_and_grad(loss(..., chunk_size=c)))` once on B samples (D = 128, four label
columns as in `bench_hierarchical.py`) and reports the process's peak resident memory
(`resource.getrusage`, ru_maxrss) before and after the step, XLA's compiled temporary
buffer size, and the wall time. A dense `[R, R]` float32 logit matrix (R = B * V rows)
would need `4 R^2` bytes (17.2 GB at R = 65,536); the chunked step needs O(R * (c + D)).
Run one size per process (the peak RSS is per process):

  nice python experiments/hier_memory.py --batch 65536 --chunk-size 512 \\
      --out experiments/results/hier_memory_b65536.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hierarchical import LOSSES, hierarchical_batch  # noqa: E402


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=65536, help="B samples")
    p.add_argument("--views", type=int, default=1, help="V views per sample (R = B * V)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--loss", choices=sorted(LOSSES), default="himulcone")
    p.add_argument("--mode", choices=["reference", "paper"], default="reference")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    x, y = hierarchical_batch(args.batch, args.dim, args.views)
    x = x[:, 0] if args.views == 1 else x
    fn = functools.partial(LOSSES[args.loss], mode=args.mode, chunk_size=args.chunk_size)
    step = jax.jit(jax.value_and_grad(fn))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    rss_inputs = peak_rss_bytes()
    t0 = time.perf_counter()
    compiled = step.lower(xj, yj).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    rss_compiled = peak_rss_bytes()
    t0 = time.perf_counter()
    value, grad = jax.block_until_ready(compiled(xj, yj))
    step_s = time.perf_counter() - t0
    rows = args.batch * args.views
    result = {
        "loss": args.loss,
        "mode": args.mode,
        "B": args.batch,
        "V": args.views,
        "rows": rows,
        "D": args.dim,
        "chunk_size": args.chunk_size,
        "value": float(value),
        "grad_finite": bool(np.all(np.isfinite(np.asarray(grad)))),
        "grad_norm": float(jnp.linalg.norm(grad)),
        "compile_s": compile_s,
        "step_s": step_s,
        "peak_rss_before_compile_gb": rss_inputs / 1e9,
        "peak_rss_after_compile_gb": rss_compiled / 1e9,
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "xla_temp_gb": None if mem is None else mem.temp_size_in_bytes / 1e9,
        "dense_logits_gb": 4 * rows**2 / 1e9,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
    }
    for key, value in result.items():
        print(f"{key:28s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
