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

.PHONY: install train test test-all test-cluster bench clean

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
	$(BIN)/python -m pytest -m "not cluster" $(PYTEST_ARGS)

# Preemption, requeue, resume and sweeps on a real single-node SLURM (../shared/tools/slurm/up.sh; root; about
# 27 minutes on 2 busy cores: 17 for the 20 preemptions). Prints each test's scenario table; outputs in a temp dir.
test-cluster: install
	scratch="$$(mktemp -d)"; trap 'rm -rf "$$scratch"' EXIT; \
	WANDB_MODE=offline WANDB_DIR="$$scratch/wandb" WANDB_CACHE_DIR="$$scratch/wandb-cache" \
	WANDB_CONFIG_DIR="$$scratch/wandb-config" TORCH_HOME="$$scratch/torch" XDG_CACHE_HOME="$$scratch/cache" \
	MPLCONFIGDIR="$$scratch/mpl" OMP_NUM_THREADS=1 \
	$(BIN)/python -m pytest -m cluster tests/cluster -rP -p no:cacheprovider --basetemp="$$scratch/pytest" $(PYTEST_ARGS)

bench: install
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
