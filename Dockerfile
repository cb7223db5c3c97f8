FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=8001 \
    METRICS_JSONL=/app/data/metrics.jsonl

WORKDIR /app
COPY pyproject.toml README.md ./
COPY metrics_service ./metrics_service
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app metrics \
    && mkdir -p /app/data \
    && chown -R metrics /app/data

USER metrics
EXPOSE 8001
VOLUME ["/app/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8001/api/metrics/behavior/health', timeout=2).status == 200 else 1)"]
CMD ["metrics-service", "serve"]
