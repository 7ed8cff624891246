#!/usr/bin/env bash
# GPU check (issue 25): on a machine with a CUDA GPU, (1) the device tests (every parameter,
# buffer, calibration statistic and Hessian of a tiny sweep on cuda), (2) a short CLI sweep with
# --device cuda and latency, compared with the same sweep on the CPU, (3) the speed of torch's
# 2:4 semi-structured sparse matmul against the dense one. Prints everything to stdout.
# Usage: bash scripts/gpu_check.sh   (PYTHON=... to use another interpreter than .venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
out="$(mktemp -d)"
export PRUNELAB_CACHE="$out/cache"

"$PY" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU; nothing to check")
    sys.exit(3)
p = torch.cuda.get_device_properties(0)
print(f"== {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}; "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

echo "== 1. device tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_device.py

echo "== 2. a short sweep on cuda and on the cpu (same cells)"
args=(sweep --model lenet300 --dataset digits --dense-epochs 3 --ft-epochs 1 --levels 0.5,0.9
      --methods magnitude,wanda,sparsegpt --allocations uniform --latency --no-report -q)
for dev in cuda cpu; do
  start=$SECONDS
  "$PY" -m prunelab "${args[@]}" --device "$dev" --out "$out/run-$dev" >/dev/null
  echo "$dev: $((SECONDS - start)) s (dense training, 6 cells and the dense control, with latency)"
done
"$PY" - "$out" <<'EOF'
import sys

from prunelab.sweep.store import load_results

out = sys.argv[1]
cols = ["method", "level", "accuracy", "latency_b1_ms", "latency_b256_ms"]
for dev in ("cuda", "cpu"):
    df = load_results(f"{out}/run-{dev}").sort_values(["method", "level"])
    print(f"-- {dev}")
    print(df[cols].to_string(index=False))
EOF

echo "== 3. 2:4 semi-structured sparse matmul vs dense (fp16, median of 100, CUDA events)"
"$PY" - <<'EOF'
import statistics

import torch

try:
    from torch.sparse import to_sparse_semi_structured
except ImportError:
    raise SystemExit("torch has no semi-structured sparsity (needs torch >= 2.1)") from None


def median_ms(fn, repeats=100, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


torch.manual_seed(0)
print(f"{'out x in, tokens':>22} {'dense ms':>9} {'2:4 ms':>9} {'speedup':>8} {'max err':>8}")
for m, k, n in [(4096, 4096, 4096), (8192, 8192, 8192), (11008, 4096, 2048), (4096, 11008, 2048)]:
    w = torch.randn(m, k, dtype=torch.float16, device="cuda")
    groups = w.view(m, k // 4, 4)  # (m, k/4, 4): keep the 2 largest of every 4
    drop = groups.abs().topk(2, dim=-1, largest=False).indices
    w = groups.scatter(-1, drop, 0).view(m, k)
    x = torch.randn(k, n, dtype=torch.float16, device="cuda")
    try:
        ws = to_sparse_semi_structured(w)
    except Exception as e:  # an older GPU (needs sm_80+) or a torch without the kernels
        raise SystemExit(f"2:4 sparse matmul unavailable here: {str(e).splitlines()[0]}") from None
    dense, sparse = median_ms(lambda: w @ x), median_ms(lambda: ws @ x)
    err = float((w @ x - ws @ x).abs().max())
    print(f"{m:>6} x {k:>6}, {n:>6} {dense:9.3f} {sparse:9.3f} {dense / sparse:7.2f}x {err:8.3f}")
EOF
rm -rf "$out"
