#!/usr/bin/env bash
# Data-parallel training on N devices of this machine with msrun (Ascend, GPU or CPU).
#
#   bash scripts/run_distribute_train.sh N [train.py arguments ...]
#   bash scripts/run_distribute_train.sh 8 --config configs/fashion_mnist.yaml --device_target Ascend
#
# Every worker runs train.py with the same arguments; batch_size is per device (global batch =
# N x batch_size). Rank 0 writes checkpoints, samples and metrics. Logs: $LOG_DIR/worker_<rank>.log
# and scheduler.log.
#
# Environment:
#   PYTHON       python of the environment holding MindSpore (default: $VIRTUAL_ENV/bin/python,
#                else python3 on PATH). Its bin folder goes first on PATH so the workers and
#                msrun's scheduler import the same MindSpore.
#   MASTER_PORT  msrun scheduler port (default 8118)
#   LOG_DIR      msrun log folder (default ./msrun_logs)
set -euo pipefail

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash $0 N [train.py arguments ...]   (N = number of devices)" >&2
  exit 2
fi
N=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"; else PYTHON=$(command -v python3); fi
fi
BIN=$(cd "$(dirname "$PYTHON")" && pwd)   # not resolved: a venv's python is a symlink
export PATH="$BIN:$PATH"
MSRUN="$BIN/msrun"
[ -x "$MSRUN" ] || MSRUN=$(command -v msrun || true)
if [ -z "$MSRUN" ]; then
  echo "error: msrun not found next to $PYTHON or on PATH (it comes with the mindspore package)" >&2
  exit 2
fi
MASTER_PORT=${MASTER_PORT:-8118}
LOG_DIR=${LOG_DIR:-./msrun_logs}
mkdir -p "$LOG_DIR"
echo "msrun: $N workers, port $MASTER_PORT, logs in $LOG_DIR (rank 0: $LOG_DIR/worker_0.log)"
exec "$MSRUN" --worker_num="$N" --local_worker_num="$N" --master_port="$MASTER_PORT" \
  --log_dir="$LOG_DIR" --join=True "$ROOT/train.py" "$@"
