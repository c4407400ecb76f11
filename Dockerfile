FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (cached layer), pinned by the lock file.
COPY pyproject.toml requirements.lock README.md ./
COPY flowforge/__init__.py flowforge/__init__.py
RUN pip install -c requirements.lock -e .

COPY flowforge ./flowforge
COPY piccolo_conf.py ./
COPY piccolo_migrations ./piccolo_migrations

RUN useradd --create-home --uid 10001 flowforge
USER flowforge

EXPOSE 8000
CMD ["uvicorn", "flowforge.main:app", "--host", "0.0.0.0", "--port", "8000"]
