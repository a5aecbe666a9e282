# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock demo test lint fmt bench down clean

install: $(STAMP)

# Exactly the locked versions, each checked against its hash; then the project itself, no deps.
$(STAMP): pyproject.toml requirements/dev.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Re-resolve both locks from pyproject.toml (the newest versions its ranges allow), with hashes.
LOCK_FLAGS := --quiet --allow-unsafe --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
lock: install
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4'
	$(BIN)/pip-compile $(LOCK_FLAGS) --upgrade -o requirements/runtime.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --upgrade --extra dev -o requirements/dev.lock pyproject.toml
	# the dev extra names the project itself (iot-failover[local]): `make install` adds it with -e
	sed -i '/^# WARNING: pip install will require/,/^    # via iot-failover (pyproject.toml)$$/d' requirements/dev.lock

demo: install
	$(BIN)/python starter.py demo

# One pytest worker per core, a test file to each (its fixtures, its stack): the e2e tests mostly
# wait on real time (verification, hysteresis), so two workers on two cores nearly halve the run.
TEST_JOBS ?= auto
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	$(BIN)/python -m bench

down: install
	$(BIN)/python starter.py local down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
