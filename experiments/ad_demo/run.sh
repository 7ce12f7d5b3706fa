#!/usr/bin/env bash
# `make ad-demo`: the offline industrial defect benchmark, end to end on CPU (docs/industrial.md).
#  1. an MVTec-layout set from images that installed packages ship (5 categories, 4 defect families with
#     exact masks; fit and test crops from disjoint regions of the sources): outputs/ad-demo/data
#  2. the demo's base model (16 px, trained on built-in shapes; it never saw these images), reused from
#     `make demo` when outputs/demo/train has it, else trained into outputs/ad-demo/train (about 3 min)
#  3. `zsad test` with the defaults (the images' own 64 px as working size, 16 px tiles every 8 px, Hann blend):
#     diffpath_fused (zsad's) and diffpath_v2 (the paper's), and the baselines pixel_gaussian and nearest_ssim in
#     the same table: outputs/ad-demo/results.md, with ablation rows of the map combination, the image-score
#     aggregation and the tile blends (fused scorer, same network pass; BLEND_RULE.md says how the blend is chosen);
#  4. the fused scorer again at stride = tile (non-overlapping tiles, where every blend is the same map):
#     outputs/ad-demo/stride16/results.md.
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
COMMON=(--data "mvtec:$OUT/data" --backbone "$CKPT" --cache-dir "$OUT/feature_cache" --device cpu --batch-size 20)
timed "$PY" -m zsad.cli test "${COMMON[@]}" --scorers diffpath_fused,diffpath_v2 -o "$OUT" "$@"
timed "$PY" -m zsad.cli test "${COMMON[@]}" --scorers diffpath_fused --tile-stride 16 --no-baselines -o "$OUT/stride16" "$@"


