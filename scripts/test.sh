#!/usr/bin/env bash
# Install everything the tests need, make sure PostgreSQL and Chromium are
# there, check the code (ruff, the import layers, mypy), then run the whole
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi

echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== import layers" && .venv/bin/lint-imports
echo "== mypy gateway" && .venv/bin/mypy gateway

export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
