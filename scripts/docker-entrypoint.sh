#!/bin/sh
# The container's entry point. With no arguments it runs the quick start in
# front of the upstream named by GATEWAY_UPSTREAM, proxy on every interface of
# the container, admin listener on its loopback unless GATEWAY_ADMIN_HOST says
# otherwise. With arguments it runs them as a gateway command, so a mounted
# config is served with: serve --config /app/gateway.yaml --host 0.0.0.0
set -eu

if [ "$#" -eq 0 ]; then
    if [ -z "${GATEWAY_UPSTREAM:-}" ]; then
        echo "GATEWAY_UPSTREAM is not set: give the upstream's base URL" \
            "(docker run -e GATEWAY_UPSTREAM=https://api.openai.com ...)," \
            "or pass a command (serve --config /app/gateway.yaml --host 0.0.0.0)" >&2
        exit 2
    fi
    set -- serve \
        --upstream "$GATEWAY_UPSTREAM" \
        --policies policies \
        --host "${GATEWAY_HOST:-0.0.0.0}" \
        --port "${GATEWAY_PORT:-8080}" \
        --admin-host "${GATEWAY_ADMIN_HOST:-127.0.0.1}" \
        --admin-port "${GATEWAY_ADMIN_PORT:-8081}"
fi
exec gateway "$@"
