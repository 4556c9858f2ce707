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

# Tools from Debian packages, unpacked into .tools/ rather than installed, so
# no service is set up: unpack PACKAGE BINARY-PATH-INSIDE-IT
unpack() {
  local package=$1 binary=$2
  if ! command -v "$(basename "$binary")" >/dev/null 2>&1 && [ ! -x ".tools/$package/$binary" ]; then
    if command -v apt-get >/dev/null 2>&1; then
      mkdir -p .tools && (cd .tools && apt-get download -qq "$package" >/dev/null 2>&1 \
        || (apt-get update -qq && apt-get download -qq "$package")) \
        && dpkg-deb -x .tools/"$package"_*.deb ".tools/$package" && rm -f .tools/"$package"_*.deb
    fi
  fi
  export PATH="$PATH:$PWD/.tools/$package/$(dirname "$binary")"
}
# promtool checks the alert rules (tests/test_dashboards.py); nginx the load
# balancer's config of the compose stack (tests/test_deploy_manifests.py)
unpack prometheus usr/bin/promtool
unpack nginx usr/sbin/nginx

# Prism mocks OpenAI's and Anthropic's APIs from their OpenAPI documents
# (tests/test_conformance.py); pinned, from the npm registry
if [ ! -x .tools/prism/node_modules/.bin/prism ] && command -v npm >/dev/null 2>&1; then
  npm install --prefix .tools/prism --no-audit --no-fund --loglevel=error \
    @stoplight/prism-cli@5.16.0 >/dev/null \
    || echo "could not install Prism from npm; tests/test_conformance.py will fail" >&2
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi

# Redis holds the shared per-key limit counters (tests/test_rate_limits.py);
# a throwaway server: nothing saved to disk
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
fi

echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== import layers" && .venv/bin/lint-imports
echo "== mypy gateway" && .venv/bin/mypy gateway

export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
