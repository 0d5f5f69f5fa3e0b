# Every target creates the virtual environment it needs; nothing is assumed installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Serving runs from its own environment with only the `serve` extra: no torch.
SERVE_VENV ?= .venv-serve
# checkov pins packaging<24, which pytest 9 refuses: it lives in its own tool environment.
TOOLS_VENV ?= .venv-tools
# make test-latest: a throwaway environment with the newest versions pyproject.toml allows.
LATEST_VENV ?= .venv-latest

.DEFAULT_GOAL := help
.PHONY: help install lock test-latest serve sample test lint typecheck unit model model-shakespeare proto bench-quality bench-quantize load deploy-check container-test container-bench fuzz bench-overload bench-soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

# Every environment installs from its lock in locks/: exact versions and sha256 hashes, for Linux x86-64 and
# aarch64 and macOS arm64 on Python 3.11 and newer. pip checks every hash (--require-hashes) and resolves
# nothing (--no-deps), so a fresh machine gets what CI tested, whatever is newest that day. pip itself and
# setuptools come from the lock too: the project is built without an isolated build environment (which would
# fetch the newest setuptools). `make lock` refreshes the locks from pyproject.toml's ranges, on purpose.
LOCKS       := locks
PIP_LOCKED  := pip install -q --require-hashes --no-deps
PIP_PROJECT := pip install -q --no-deps --no-build-isolation

# torch is the CPU build: on Linux the lock names PyTorch's `+cpu` wheel from its CPU index (PyPI's Linux
# torch is the CUDA build, gigabytes), on macOS PyPI's. It is installed first and alone (locks/torch.txt),
# the only install that asks that index: a machine that cannot reach it falls back, after pip's retries
# (about 10 s), to a wheel in its pip find-links or local indexes. pip checks its hash wherever the lock has
# one; where `make lock` could not fetch the wheel to hash it, locks/torch.txt pins the exact version alone. A CUDA build on purpose: `make install TORCH_BUILD=cu128` then replaces the locked torch with
# PyTorch's build for this version (outside the lock; any build PyTorch publishes for it).
TORCH_VERSION := $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
TORCH_BUILD   ?= cpu
TORCH_INDEX   ?= https://download.pytorch.org/whl/$(TORCH_BUILD)
TORCH_LOCKED  := $(if $(filter Linux,$(shell uname -s)),--extra-index-url https://download.pytorch.org/whl/cpu)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(LOCKS)/dev.txt $(LOCKS)/torch.txt | $(BIN)/python
	$(BIN)/pip install -q --no-deps $(TORCH_LOCKED) -r $(LOCKS)/torch.txt
	$(BIN)/$(PIP_LOCKED) -r $(LOCKS)/dev.txt
	$(BIN)/$(PIP_PROJECT) -e .
	$(if $(filter-out cpu,$(TORCH_BUILD)),$(BIN)/pip install -q --index-url $(TORCH_INDEX) 'torch==$(TORCH_VERSION)+$(TORCH_BUILD)')
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml $(LOCKS)/serve.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/$(PIP_LOCKED) -r $(LOCKS)/serve.txt
	$(SERVE_VENV)/bin/$(PIP_PROJECT) -e .
	touch $@

$(TOOLS_VENV)/.installed: $(LOCKS)/tools.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/$(PIP_LOCKED) -r $(LOCKS)/tools.txt
	touch $@

install: $(VENV)/.installed  ## the development environment (all extras) in .venv, from locks/dev.txt

lock: install  ## refresh locks/ from pyproject.toml's ranges (every platform, with hashes); commit the result
	UV=$(BIN)/uv PYTHON=$(BIN)/python scripts/lock.sh

# Not part of CI: the same suite on the newest versions pyproject.toml allows today, so that drift shows up here
# before a user's `pip install` meets it. Its own environment; the locked ones are left alone.
test-latest: $(TOOLS_VENV)/.installed $(SERVE_VENV)/.installed  ## the suite on the newest allowed versions (.venv-latest)
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q --no-deps $(TORCH_LOCKED) 'torch==$(TORCH_VERSION)$(if $(TORCH_LOCKED),+cpu)'
	$(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[serve,train,load,dev]'
	$(LATEST_VENV)/bin/pip freeze --exclude-editable >$(LATEST_VENV)/versions.txt
	touch $(LATEST_VENV)/.installed
	CHARRNN_UNLOCKED=1 $(MAKE) --no-print-directory lint typecheck unit VENV=$(LATEST_VENV)

serve: $(SERVE_VENV)/.installed  ## serve models/ (default, shakespeare): gRPC on 127.0.0.1:50051, HTTP + playground on :8000 (no torch)
	$(SERVE_VENV)/bin/charrnn serve --model-repository models --default-model default --http-port 8000 $(if $(CHARRNN_HMAC_KEY),,--dev)

sample: $(SERVE_VENV)/.installed  ## sample locally from the shipped default model (no server, no torch)
	$(SERVE_VENV)/bin/charrnn sample --model models/default --prompt 'def ' --chars 400

lint: install  ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install  ## mypy
	$(BIN)/mypy

unit: install $(TOOLS_VENV)/.installed $(SERVE_VENV)/.installed  ## pytest only
	$(BIN)/pytest -q

test: lint typecheck unit  ## the whole suite: ruff, mypy, pytest

# The shipped default model: torchrun with one process (and one torch thread) per core on the builtin Python
# corpus, then its interpretable units written into its manifest. Not in CI; docs/training.md has its figures.
model: install  ## retrain and export the shipped default model (torchrun, 2 processes, about 20 minutes)
	rm -rf runs/default
	$(BIN)/torchrun --standalone --nproc-per-node 2 --max-restarts 0 --no-python $(BIN)/charrnn train \
		--out runs/default --export models/default optim.max_minutes=19 run.threads=1
	$(BIN)/charrnn analyze units --model models/default --annotate --out runs/analysis/units

# The best configuration found (docs/benchmarks.md); QUALITY_ARGS adds or overrides settings.
QUALITY_CONFIG := model.hidden_size=512 model.embedding_size=128 model.dropout=0.2 optim.batch_size=16 \
	optim.seq_len=128 optim.lr=0.002 optim.warmup_steps=150 optim.max_steps=4000 run.eval_interval=250 \
	run.sample_interval=250 run.threads=1 run.sample_prime=ROMEO:

# char-rnn's data/tinyshakespeare/input.txt (1.1 MB), which the repository does not include: download it
# (TINY_SHAKESPEARE_URL) to this path (git ignores data/), or point TINY_SHAKESPEARE elsewhere.
TINY_SHAKESPEARE ?= data/tinyshakespeare.txt
TINY_SHAKESPEARE_URL := https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt

# The lecture's model, models/shakespeare: tiny shakespeare on the standard 90/10 split, torchrun with one
# process (and one torch thread) per core, a 29.4-minute budget (29.8 minutes of torchrun with the evaluations
# and the export), then its interpretable units written into its manifest (a minute or two more). LSTM 2 x 550,
# the widest that keeps both shipped models under 20 MB. A small global batch (16 x 128) for many updates;
# dropout 0.4 with one mask per stream for each window (model.dropout_mask=window), which learns as fast as
# light dropout and over-fits the 1 M characters as little as heavy dropout; weight decay 0.3 (0.1 ended
# 0.015 worse); each pass over the text starts at a new offset (optim.epoch_shift); the weights' running
# average (optim.ema_decay) is what gets evaluated and exported; the cosine decays to 2% of the peak rate.
# fp32: bf16 autocast was not reliably faster on this project's CPUs (charrnn bench train-options). Not in CI.
SHAKESPEARE_CONFIG := model.hidden_size=550 model.embedding_size=128 model.dropout=0.4 model.dropout_mask=window \
	optim.weight_decay=0.3 optim.epoch_shift=true optim.batch_size=16 optim.seq_len=128 optim.lr=0.002 \
	optim.min_lr_ratio=0.02 optim.warmup_steps=150 optim.max_steps=20000 optim.max_minutes=29.4 optim.ema_decay=0.999 \
	run.eval_interval=1000 run.sample_interval=250 run.threads=1 run.sample_prime=ROMEO:

model-shakespeare: install  ## retrain models/shakespeare on tiny shakespeare (TINY_SHAKESPEARE=path; torchrun, 2 processes, 30 min)
	@test -f "$(TINY_SHAKESPEARE)" || { echo "make model-shakespeare: no corpus at $(TINY_SHAKESPEARE); download \
	$(TINY_SHAKESPEARE_URL) there, or pass TINY_SHAKESPEARE=/path/to/input.txt" >&2; exit 2; }
	rm -rf runs/shakespeare
	$(BIN)/torchrun --standalone --nproc-per-node 2 --max-restarts 0 --no-python $(BIN)/charrnn train \
		--corpus "$(TINY_SHAKESPEARE)" --out runs/shakespeare --export models/shakespeare --name shakespeare \
		$(SHAKESPEARE_CONFIG) $(SHAKESPEARE_ARGS)
	$(BIN)/charrnn analyze units --model models/shakespeare --annotate --out runs/analysis/units-shakespeare

bench-quality: install  ## 30-minute quality benchmark on tiny shakespeare (TINY_SHAKESPEARE=path; docs/benchmarks.md)
	@test -f "$(TINY_SHAKESPEARE)" || { echo "make bench-quality: no corpus at $(TINY_SHAKESPEARE); download \
	$(TINY_SHAKESPEARE_URL) there, or pass TINY_SHAKESPEARE=/path/to/input.txt" >&2; exit 2; }
	$(BIN)/charrnn bench quality --corpus "$(TINY_SHAKESPEARE)" --minutes 30 \
		--out runs/bench-quality $(QUALITY_CONFIG) $(QUALITY_ARGS)

bench-quantize: install  ## int8 decode ceiling: fp32 vs per-row int8 vs ONNX Runtime's per-tensor int8 (docs/benchmarks.md)
	$(BIN)/charrnn bench quantize --model models/default --out bench-results/quantize $(QUANTIZE_ARGS)

bench-overload: install  ## overload benchmark: 10x the stream limit (docs/benchmarks.md)
	$(BIN)/charrnn bench overload --model models/default --max-live-streams 16 --max-queued-streams 16 --factor 10 \
		--seconds 60 --out bench-results/overload $(OVERLOAD_ARGS)

bench-soak: install  ## 30-minute soak: gRPC + HTTP, sessions, Score, cancels, resumes, hostile requests, bystanders (SOAK_MINUTES)
	$(BIN)/charrnn bench soak --model models/default --minutes $${SOAK_MINUTES:-30} --streams 64 --out bench-results/soak $(SOAK_ARGS)

load: install  ## Locust load test: starts a server unless LOAD_ARGS has --target; reports in load-results/
	$(BIN)/python bench/load/run.py $(LOAD_ARGS)

deploy-check: install $(TOOLS_VENV)/.installed  ## Dockerfile, compose, kustomize, checkov and serve-only checks
	$(BIN)/pytest -q tests/deploy

container-test: install  ## build and run the images in a private dockerd: Deployment constraints, drain, failover, compose (root)
	$(BIN)/pytest -q -m containers tests/containers

container-bench: install  ## image sizes, cold/warm build times, start to healthy (docs/benchmarks.md; root)
	$(BIN)/python -m tests.containers.bench $(CONTAINER_BENCH_ARGS)

fuzz: install  ## the fuzz suite at 10x its default size (CHARRNN_FUZZ_EXAMPLES)
	CHARRNN_FUZZ_EXAMPLES=$${CHARRNN_FUZZ_EXAMPLES:-20000} $(BIN)/pytest -q tests/fuzz

proto: install  ## regenerate charrnn/v1 from proto/ (a test fails when the committed code is stale)
	PYTHON=$(BIN)/python scripts/gen_proto.sh

clean:  ## remove environments and run outputs (runs/, load-results/, bench-results/)
	rm -rf $(VENV) $(SERVE_VENV) $(TOOLS_VENV) $(LATEST_VENV) runs load-results bench-results .mypy_cache .ruff_cache .pytest_cache
