#!/usr/bin/env bash
# `make fast-sweep`: the fast-preset sweep of RULE.md on both defect benchmarks at 128 px (about 1–2 h on 2 CPU cores).
#  1. the demo's base model (16 px), reused from `make demo` / `make ad-demo` when there, else trained (about 3 min);
#  2. experiments/fast_preset/sweep.py: both benchmarks, every setting, paired Δ, the rule's decision:
#     outputs/fast_preset/results.md. An interrupted sweep resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
test -x "$PY" || make install
export WANDB_MODE="${WANDB_MODE:-offline}"
OUT=outputs/fast_preset
mkdir -p "$OUT"
CKPT=""
for c in outputs/demo/train/checkpoints/last.ckpt outputs/ad-demo/train/checkpoints/last.ckpt "$OUT/train/checkpoints/last.ckpt"; do
  [ -f "$c" ] && CKPT="$c" && break
done
if [ -z "$CKPT" ]; then
  CKPT="$OUT/train/checkpoints/last.ckpt"
  "$PY" -m zsad.cli train -c conf/train/demo.yaml output_dir="$OUT/train" resume=never -q
fi
"$PY" experiments/fast_preset/sweep.py --backbone "$CKPT" --out "$OUT" "$@"
