#!/usr/bin/env bash
# Training on one device (Ascend, GPU or CPU).
#
#   bash scripts/run_standalone_train.sh [train.py arguments ...]
#   DEVICE_ID=3 bash scripts/run_standalone_train.sh --config configs/fashion_mnist.yaml --device_target Ascend
#
# Environment:
#   PYTHON     python of the environment holding MindSpore (default: $VIRTUAL_ENV/bin/python,
#              else python3 on PATH)
#   DEVICE_ID  device to use when --device_id is not given (default 0)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"; else PYTHON=$(command -v python3); fi
fi
export PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"
export DEVICE_ID=${DEVICE_ID:-0}
# a single process: make sure no launcher variables left in the shell turn data parallel on
unset MS_ROLE MS_WORKER_NUM RANK_TABLE_FILE RANK_SIZE
exec "$PYTHON" "$ROOT/train.py" "$@"
