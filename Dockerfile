# syntax=docker/dockerfile:1
# A specific release, not a floating tag, so a rebuild gets the same Python and
# Debian. Where the registry is reachable at review time, pin the digest as
# well (python:3.11.7-slim-bookworm@sha256:...): a tag can be re-pushed.
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone: a change to the code reuses
# this layer instead of reinstalling torch. The extra index serves torch's CPU
# build (2.13.0+cpu satisfies the pin torch==2.13.0); without it pip takes the
# multi-GB CUDA build. It is a build argument used by this one command, so it
# never reaches the image's environment.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --extra-index-url "$TORCH_INDEX_URL" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, installed without touching the dependencies above.
COPY README.md ./
COPY gateway ./gateway
RUN pip install --no-deps . && pip check

COPY policies ./policies
COPY indexes ./indexes
COPY gateway.example.yaml ./
COPY --chmod=0755 scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
# the shipped copyright policy needs the sample index: build it into the image
RUN python -c "from gateway.index import ensure_sample; ensure_sample('indexes')" \
    && gateway policy validate policies/

# The state folder holds the admin token, the SQLite database and the decision
# journal: the gateway user's alone, and a volume so it outlives the container.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home gateway \
    && mkdir -p .gateway \
    && chown -R 10001:10001 .gateway indexes \
    && chmod 700 .gateway
VOLUME ["/app/.gateway"]
# numeric, so an orchestrator's "must not run as root" check can verify it
USER 10001:10001

# The proxy. The admin listener (8081: health, metrics, the governance API and
# the review pages) binds the container's loopback unless GATEWAY_ADMIN_HOST
# (or --admin-host) says otherwise; the health check calls it there, on
# GATEWAY_ADMIN_PORT (8081): a mounted gateway.yaml that moves the admin
# listener must set GATEWAY_ADMIN_PORT to match.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GATEWAY_ADMIN_PORT', '8081'), timeout=2)"]

# With no command: the quick start in front of $GATEWAY_UPSTREAM
# (scripts/docker-entrypoint.sh); any other command runs as `gateway <command>`.
ENTRYPOINT ["docker-entrypoint"]
CMD []
