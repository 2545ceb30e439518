# Two commands for a new user: `make train` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Extra Hydra overrides for `make train`, e.g. `make train ARGS="trainer.max_epochs=2"`.
ARGS ?=
# Extra pytest arguments for `make test`, e.g. `make test PYTEST_ARGS="-k flows"`.
PYTEST_ARGS ?=
# Extra arguments for `make bench`, e.g. `make bench BENCH_ARGS="--presets celeba_one_step --device cuda"`.
BENCH_ARGS ?=

.PHONY: install train test test-all bench clean

install: $(STAMP)

# Reinstalls only when pyproject.toml changes (the package itself is installed editable).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

train: install
	$(BIN)/linearizer train experiment=mnist_one_step $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
