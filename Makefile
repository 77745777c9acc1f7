# Thin aliases over the tools configured in pyproject.toml. `make test` and `make demo` set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch that lies on this machine: installed before the project, so pip never fetches
# a multi-GB CUDA build to satisfy the project's torch range.
TORCH ?= torch==2.13.0

.PHONY: setup test lint unit demo bench-sim bench-personal bench-quality bench-scale bench-sim-scale bench bench-attach bench-peers bench-wan soak fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,plot]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint unit

demo: setup
	$(BIN)/python scripts/demo.py

bench-sim: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_sim.py

# A personal last layer ([gossip] personal) against the shared model on skewed splits, 8 simulated peers.
bench-personal: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_personal.py

# Quality against one model on all the data, on non-IID splits: Tiny Shakespeare by position, Titanic, MNIST.
bench-quality: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_quality.py

# What a daemon costs as its swarm grows: memory, startup, discovery traffic of 4-16 real daemons (ss, /proc).
bench-scale: setup
	$(BIN)/python scripts/bench_scale.py --write

# The simulator with hundreds of peers: time per round, memory per peer, accuracy for the same total samples.
bench-sim-scale: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_sim_scale.py --write

bench: setup
	$(BIN)/python scripts/bench.py

# A training script of its own attached to its daemon (gossipd.attach), against the same script bare.
bench-attach: setup
	$(BIN)/python scripts/bench_attach.py

# gossipd against hivemind, Flower, DDP and single-model baselines (creates their virtualenvs under build/).
bench-peers: setup
	$(BIN)/python scripts/bench_peers.py

# The same race on an emulated network with 10 and 100 Mbit/s links (needs root, unshare and tc; see netlab).
bench-wan: setup
	$(BIN)/python scripts/bench_wan.py

# The slow tests (pytest -m slow), then 8 daemons with one killed every 20 s.
soak: setup
	$(BIN)/pytest -m slow
	$(BIN)/python scripts/soak.py

fuzz: setup
	mkdir -p out
	$(BIN)/python -m gossipd.tools.fuzz --inputs 100000 --json out/fuzz.json --record RELIABILITY.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
