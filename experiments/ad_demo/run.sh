#!/usr/bin/env bash
# `make ad-demo`: the offline industrial defect benchmark, end to end on CPU (docs/industrial.md).
#  1. an MVTec-layout set from images that installed packages ship (5 categories, 4 defect families with
#     exact masks; fit and test crops from disjoint regions of the sources): outputs/ad-demo/data
#  2. the demo's base model (16 px, trained on built-in shapes; it never saw these images), reused from
#     `make demo` when outputs/demo/train has it, else trained into outputs/ad-demo/train (about 3 min)
#  3. `zsad test` with the settings fixed in docs/method.md §7 before measuring, scaled to the 16 px model:
#     64 px working size, non-overlapping 16 px tiles; diffpath_fused (zsad's) and diffpath_v2 (the paper's),
#     and the baselines pixel_gaussian and nearest_ssim in the same table: outputs/ad-demo/results.md
#     with ablation rows of the map combination and the image-score aggregation (fused scorer, same network pass).
# Wall times go to outputs/ad-demo/times.txt. Deterministic at a given thread count.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
test -x "$PY" || make install
export WANDB_MODE="${WANDB_MODE:-offline}"
OUT=outputs/ad-demo
mkdir -p "$OUT"
timed() {
  local start=$SECONDS
  "$@"
  echo "$(date -u +%FT%TZ) $((SECONDS - start)) s: $*" | tee -a "$OUT/times.txt"
}
timed "$PY" -c "from zsad.data.defects import make_defect_benchmark; s = make_defect_benchmark('$OUT/data', size=64, n_train=60, n_test_good=20, n_test_defect_per_family=10, seed=0); print({k: v for k, v in s.items() if k != 'categories'})"
CKPT=outputs/demo/train/checkpoints/last.ckpt
if [ ! -f "$CKPT" ]; then
  CKPT="$OUT/train/checkpoints/last.ckpt"
  [ -f "$CKPT" ] || timed "$PY" -m zsad.cli train -c conf/train/demo.yaml output_dir="$OUT/train" resume=never -q
fi
COMMON=(--data "mvtec:$OUT/data" --backbone "$CKPT" --working-size 64 --tile-stride 16 --cache-dir "$OUT/feature_cache" --device cpu --batch-size 20)
timed "$PY" -m zsad.cli test "${COMMON[@]}" --scorers diffpath_fused,diffpath_v2 -o "$OUT" "$@"


