# FlowForge's production image: the wheel and its pinned dependencies in a
# virtualenv, no build or dev tools, a non-root user.
# .ci/prod_smoke.py repeats this install (clean venv, wheel, -c requirements.lock)
# and runs this CMD and HEALTHCHECK outside Docker on every CI run.

# --- build: the wheel, then a virtualenv with it and its locked dependencies
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py README.md requirements.lock ./
COPY flowforge ./flowforge
COPY piccolo_migrations ./piccolo_migrations
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/flowforge \
    && /opt/flowforge/bin/pip install -c requirements.lock /wheels/flowforge-*.whl

# --- runtime: the virtualenv only
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/flowforge/bin:$PATH \
    # The piccolo CLI's configuration inside the installed package, for
    # `piccolo ...` by hand; scripts use `flowforge migrate`, `flowforge relay`,
    # ..., which find it themselves and exit non-zero on an unknown command.
    PICCOLO_CONF=flowforge.piccolo_conf \
    FLOWFORGE_ENV=production \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    # Whose X-Forwarded-For / X-Forwarded-Proto --proxy-headers believes: only
    # this container itself by default. Behind a reverse proxy in another
    # container or host, set it to the proxy's address or network (docs/deploying.md,
    # "Behind a reverse proxy"); never * while clients can reach the app directly.
    FORWARDED_ALLOW_IPS=127.0.0.1

COPY --from=build /opt/flowforge /opt/flowforge

RUN groupadd --gid 10001 flowforge \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin flowforge
USER 10001:10001
WORKDIR /home/flowforge

EXPOSE 8000
# Liveness only (never the database): python's urllib, the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('UVICORN_PORT', '8000')}/healthz\", timeout=3)"]
# Host and port: UVICORN_HOST / UVICORN_PORT; trusted proxies: FORWARDED_ALLOW_IPS.
# Migrations are not run here: run `flowforge migrate` once per deploy (compose:
# the migrate service).
CMD ["uvicorn", "flowforge.main:app", "--proxy-headers"]
