#!/usr/bin/env bash
# The 32 px real-image benchmark end to end, offline, on CPU (about 2 h on 2 cores): train the base
# model, evaluate the three main scorers, then the ablation of DiffPathV2's readings with every other
# scorer in the same table. Each step resumes or reuses what an earlier run left (checkpoints, feature
# cache), so rerunning after an interruption loses nothing. Wall times go to outputs/real32/times.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
ZSAD=.venv/bin/zsad
test -x "$ZSAD" || make install
export WANDB_MODE="${WANDB_MODE:-offline}"
mkdir -p outputs/real32
timed() {
  local start=$SECONDS
  "$@"
  echo "$(date -u +%FT%TZ) $((SECONDS - start)) s: $*" | tee -a outputs/real32/times.txt
}
timed "$ZSAD" train -c conf/train/real32.yaml
timed "$ZSAD" evaluate -c conf/eval/real32.yaml
timed "$ZSAD" ablate -c conf/ablate/real32_v2.yaml
