#!/usr/bin/env bash
# One lease of a GPU machine (about 10 minutes): check the CUDA paths, measure training speed
# against transformers, and Tiny Shakespeare against the clock. The figures go to BENCHMARKS.md.
#
#   OUT=results bash benchmarks/gpu_session.sh DATA_DIR
#
# DATA_DIR holds tinyshakespeare.txt and vocab2048.txt (a 2048-token vocabulary learned from it by
# `python main.py tokenize`, so the GPU machine spends no time on it). Each part has its own time limit.
set -uo pipefail
export PYTHONUNBUFFERED=1
DATA=${1:?give the folder with tinyshakespeare.txt and vocab2048.txt}
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv

echo "== 1. CUDA paths"
timeout 100 python3 benchmarks/gpu_checks.py 2>&1 | tee "$OUT/checks.txt"

echo "== 2. GPT-2 124M training speed, ours and transformers, bf16, eager and compiled"
timeout 300 python3 benchmarks/bench_train_speed.py --dtype bf16 --steps 10 2>&1 | tee "$OUT/speed.txt"

echo "== 3. Tiny Shakespeare, three recipes side by side on the one GPU, 2.2 minutes each"
run() {  # name, then flags for main.py train
    local name=$1; shift
    timeout 165 python3 main.py train "$DATA/tinyshakespeare.txt" "$DATA/vocab2048.txt" --out "/tmp/$name.pt" \
        --minutes 2.2 --eval-every 100 --log-every 10 --sample-tokens 0 "$@" > "$OUT/$name.log" 2>&1
    cp "/tmp/$name.metrics.jsonl" "$OUT/" 2>/dev/null
}
run mini_b64 --preset mini --dropout 0.2 --batch-size 64 --lr 1e-3 &
run small_b32 --preset small --dropout 0.2 --batch-size 32 --lr 6e-4 &
run mini_b32_compiled --preset mini --dropout 0.2 --batch-size 32 --lr 2e-3 --compile &
wait
python3 - "$OUT" <<'PY'
import json, math, sys
from pathlib import Path
print("| run | steps | best val bpb | at step | seconds to 2.12 bpb | final val bpb |")
for f in sorted(Path(sys.argv[1]).glob("*.metrics.jsonl")):
    records = [json.loads(line) for line in f.read_text().splitlines()]
    evals = [r for r in records if r.get("eval")]
    steps = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    if not evals:
        print(f"| {f.name} | no evaluation |"); continue
    best = min(evals, key=lambda r: r["val_bpb"])
    hit = next((r for r in evals if r["val_bpb"] <= 2.12), None)
    when = "" if hit is None else f"{steps.get(hit['step'], steps[max(s for s in steps if s <= hit['step'])]):.0f}"
    print(f"| {f.name.split('.')[0]} | {evals[-1]['step']} | {best['val_bpb']:.4f} | {best['step']} | {when} | "
          f"{evals[-1]['val_bpb']:.4f} |")
PY
