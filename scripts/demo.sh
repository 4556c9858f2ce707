#!/usr/bin/env bash
# Set everything up, then run the gateway in front of the bundled demo upstream
# (a simulator) with a scripted tour. Pass --serve to keep it running after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/gateway demo "$@"
