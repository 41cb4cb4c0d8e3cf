#!/usr/bin/env bash
# GPU check of the fused aggregation (issue 7): the CUDA tests, then the GPU benchmarks.
# Needs a CUDA device, torch with CUDA and triton; about 3-4 minutes on one H100/H200-class GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs and JSON land in OUT_DIR (default gpu_check_out)
#
# Paste the summary it prints at the end into docs/benchmarks.md ("GPU" section).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONUNBUFFERED=1 LANDMARK_GRAPH_BACKEND=triton
status=0

{
  echo "## environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt" || status=1

echo "## 1. CUDA tests (tests/test_ops_cuda.py) and the CPU op tests"
timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider -p no:xdist -o addopts="--import-mode=importlib" \
  tests/test_ops_cuda.py tests/test_ops.py -x 2>&1 | tee "$OUT/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if grep -q "needs a CUDA device" "$OUT/tests.txt"; then echo "CUDA tests were skipped: no GPU seen"; status=1; fi

echo "## 2. bench_aggregate on the GPU (fp32, then bf16 for bandwidth)"
timeout 420 "$PY" benchmarks/bench_aggregate.py --device cuda --budget 0.3 \
  --json "$OUT/bench_aggregate_cuda.json" 2>&1 | tee "$OUT/bench_aggregate_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 120 "$PY" benchmarks/bench_aggregate.py --device cuda --dtype bfloat16 --only 98,7,128,256 \
  --budget 0.3 --json "$OUT/bench_aggregate_cuda_bf16.json" 2>&1 | tee "$OUT/bench_aggregate_cuda_bf16.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "## 3. bench_head on the GPU"
timeout 240 "$PY" benchmarks/bench_head.py --device cuda --budget 2 \
  --json "$OUT/bench_head_cuda.json" 2>&1 | tee "$OUT/bench_head_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "## 4. summary against the issue's GPU targets"
"$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
agg = json.loads((out / "bench_aggregate_cuda.json").read_text())
rows = [r for r in agg["records"] if (r["N"], r["D"], r["B"], r["mode"]) == (98, 128, 256, "fwd+bwd")]
for k in sorted({r["K"] for r in rows}):
    t = {r["method"]: r for r in rows if r["K"] == k}
    op = t["op"]["seconds"]
    for alt in ("dense", "gather+einsum"):
        ratio = t[alt]["seconds"] / op
        print(f"B=256 N=98 K={k} D=128 fwd+bwd: {alt} / op = {ratio:.2f}x (target >= 2) "
              f"{'OK' if ratio >= 2 else 'MISS'}")
    peak = {m: r.get("peak_bytes") for m, r in t.items()}
    bnkd = 256 * 98 * k * 128 * 4
    print(f"  peak extra memory (MB): " + ", ".join(f"{m}={v / 2**20:.1f}" for m, v in peak.items() if v)
          + f"; a (B,N,K,D) fp32 tensor is {bnkd / 2**20:.1f} MB")
bw = agg.get("bandwidth", {})
print(f"bandwidth fp32 {bw.get('shape')}: {bw.get('op_GBs', 0):.0f} GB/s = "
      f"{bw.get('fraction_of_copy', 0):.0%} of clone() bandwidth ({bw.get('copy_GBs', 0):.0f} GB/s), "
      f"{bw.get('fraction_of_nominal', float('nan')):.0%} of nominal peak {bw.get('nominal_peak_GBs')} GB/s "
      "(target >= 50%)")
bf = json.loads((out / "bench_aggregate_cuda_bf16.json").read_text()).get("bandwidth", {})
print(f"bandwidth bf16: {bf.get('op_GBs', 0):.0f} GB/s = {bf.get('fraction_of_nominal', float('nan')):.0%} of nominal")
head = json.loads((out / "bench_head_cuda.json").read_text())
for name, r in head["graph_layers_fwd_bwd"].items():
    print(f"graph layers fwd+bwd B=64 {name}: {r['seconds'] * 1e3:.2f} ms, authors/this {r['speedup_vs_authors']:.2f}x")
EOF
echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED) (outputs in $OUT/)"
exit $status
