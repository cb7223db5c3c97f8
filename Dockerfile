# Build stage: a C compiler for the C extension (metrics_service/_native/_speedups.c).
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY metrics_service ./metrics_service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=8001 \
    METRICS_JSONL=/app/data/metrics.jsonl

WORKDIR /app
COPY --from=build /wheels /wheels
# The import fails the build if the wheel came out without the C extension.
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "import metrics_service._native._speedups" \
    && useradd --system --uid 10001 --home-dir /app metrics \
    && mkdir -p /app/data \
    && chown -R metrics /app/data

USER metrics
EXPOSE 8001
VOLUME ["/app/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8001/api/metrics/behavior/health', timeout=2).status == 200 else 1)"]
CMD ["metrics-service", "serve"]
