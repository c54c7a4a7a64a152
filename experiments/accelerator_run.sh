#!/usr/bin/env bash
# The accelerator table (experiments/bench_accelerator.py) in one call on a machine lent for
# a fixed time, whose image holds JAX, torch, flax, optax and the rest of requirements.txt
# except the pure-Python packages below, and reaches no package index: those travel as
# wheels in .whl/ (ignored by git).
#
#   experiments/accelerator_run.sh fetch-wheels            # here, where pip reaches an index
#   BUDGET_S=480 experiments/accelerator_run.sh run OUT_DIR [bench_accelerator.py flags]
#
# `run` writes OUT_DIR/bench_accelerator_gpu.json (every section, float32 global batches)
# and OUT_DIR/bench_accelerator_gpu_bf16.json (the global batches in bf16), each rewritten
# after every measurement, and starts no measurement after BUDGET_S seconds (default 480:
# ends inside a 10-minute call with room for the last measurement and the transfers).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  fetch-wheels)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
      "$(grep -o '^ml-collections==[^ ]*' requirements.txt)" pytorch-metric-learning==2.9.0
    ls .whl
    ;;
  run)
    out=${2:?usage: $0 run OUT_DIR [flags]}
    shift 2
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
        --target /tmp/himl-site .whl/*.whl
      export PYTHONPATH="/tmp/himl-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
      export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    budget=${BUDGET_S:-480}
    # The shortest sections first, so that a run cut short still has every kind of row.
    python3 experiments/bench_accelerator.py --sections knn resnet global_batch losses \
      --max-step-s 20 --repeats 5 --deadline-s $((budget * 3 / 4)) \
      --out "$out/bench_accelerator_gpu.json" "$@"
    left=$((budget - SECONDS))
    if ((left > 30)); then
      python3 experiments/bench_accelerator.py --sections global_batch --global-dtype bfloat16 \
        --max-step-s 20 --repeats 5 --deadline-s "$left" \
        --out "$out/bench_accelerator_gpu_bf16.json" "$@"
    fi
    ;;
  *)
    echo "usage: $0 fetch-wheels | run OUT_DIR [bench_accelerator.py flags]" >&2
    exit 2
    ;;
esac
