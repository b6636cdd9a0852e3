# mmlo: `make study` sets up everything and runs the front-door study; `make test` sets up, lints (`make lint`:
# ruff and mypy) and runs the tests.
# Both are idempotent: a second run reuses the virtualenv and starts in seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= studies/kml_ablation.yaml
# Debian packages: fonts for the built-in benchmark's glyphs and emoji, Chromium for the report test,
# jemalloc for image trials (models/allocator.py: large meta-batches reuse memory instead of page-faulting).
SYSTEM_PACKAGES := fonts-noto-core fonts-unifont fonts-freefont-ttf fonts-dejavu-core fonts-noto-color-emoji chromium libjemalloc2
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_UV_RUN_RUNTIME_ENV ?= 0

.PHONY: setup system study test test-fast lint bench gpu-check clean

setup: $(VENV)/.installed system

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "mmlo: please install these system packages (fonts, Chromium, jemalloc): $$missing"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
		echo "mmlo: missing system packages; run: sudo apt-get update && sudo apt-get install -y $$missing"; \
		echo "mmlo: (without them the built-in benchmark refuses modes whose fonts are missing, the report test fails and image trials use the system malloc)"; exit 0; fi; \
	echo "mmlo: installing system packages: $$missing"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null

study: setup
	$(BIN)/mmlo data prepare offline4 --study $(STUDY)
	$(BIN)/mmlo study $(STUDY)

test: setup lint
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# ruff over the tree; mypy over the packages, which it reads through links build/mypy/mmlo/<folder> (it cannot
# map the mmlo namespace from package-dir), then over each test folder on its own (test folders are not
# packages and their conftest.py files share one name) and the maintainer script the tests import; the packages'
# errors are reported once, by the first run.
MYPY_PACKAGES := orchestrator models reports storage tasks
TEST_DIRS := $(sort $(dir $(wildcard tests/*/test_*.py)))

lint: setup
	$(BIN)/ruff check .
	@mkdir -p build/mypy/mmlo && for p in $(MYPY_PACKAGES); do ln -sfn ../../../$$p build/mypy/mmlo/$$p; done
	$(BIN)/mypy
	@status=0; for target in tests/conftest.py $(TEST_DIRS) scripts/build_offline4_index.py; do \
		echo "mypy $$target"; $(BIN)/mypy --follow-imports=silent $$target || status=1; done; exit $$status

bench: setup
	$(BIN)/mmlo bench

# On a machine with CUDA: bench on the GPU and the smoke study with gpus_per_trial 0.5; figures in gpu-check.json.
gpu-check: setup
	$(BIN)/python scripts/gpu-check --out gpu-check.json

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache build/mypy
