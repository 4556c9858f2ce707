# syntax=docker/dockerfile:1
FROM python:3.11-slim AS runtime

# Point this at a CPU wheel index to avoid the multi-GB CUDA build of torch.
ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    HF_HUB_OFFLINE=1

WORKDIR /app
# dependencies first, so code changes reuse the cached layer
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install . && pip check

COPY policies ./policies
COPY indexes ./indexes
COPY gateway.example.yaml ./
# the shipped copyright policy needs the sample index: build it into the image
RUN python -c "from gateway.index import ensure_sample; ensure_sample('/app/indexes')" \
    && gateway policy validate policies/

# the state folder holds the admin token and the database: the gateway user's only
RUN useradd --system --uid 10001 --home /app gateway \
    && mkdir -p /app/.gateway \
    && chown -R gateway /app/.gateway /app/indexes \
    && chmod 700 /app/.gateway
USER gateway

# the proxy; the admin listener (8081) binds 127.0.0.1 unless --admin-host says otherwise
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/app/gateway.yaml"]
