# actionprior — common tasks. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

NODES ?= 1
GPUS ?= 0
DATA ?= data_shards/sim-default
EPISODES ?= 20
WORKERS ?= 2
STAGE1_CKPT ?= runs/stage1/checkpoints/last.ckpt
ARGS ?=

.PHONY: help install test fuzz test-fast lint format demo collect stage1 stage2 eval bench bench-train bench-gpu reproduce clean-runs libero-env

help:  ## list the targets
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## venv + pinned dependencies + simulators + rendering libraries (idempotent)

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	@touch $@

test: install  ## the whole test suite (what CI runs)
	$(PY) -m pytest -q

fuzz: install  ## every case of the seeded dataset fuzz set (~20 min; make test runs a spread sample)
	ACTIONPRIOR_FUZZ_FULL=1 $(PY) -m pytest -q -s tests/test_fuzz_data.py

test-fast: install  ## skip simulator and slow tests
	$(PY) -m pytest -q -m "not sim and not slow"

lint: install  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install  ## simulated demos -> Stage 1 -> Stage 2 -> closed-loop evaluation, on CPU
	$(VENV)/bin/actionprior demo $(ARGS)

collect: install  ## collect the default simulated dataset (EPISODES per task)
	$(VENV)/bin/actionprior data collect --suite sim-default --episodes-per-task $(EPISODES) --workers $(WORKERS) --out $(DATA)

stage1: install  ## train the action prior (NODES=.. GPUS=.. DRY_RUN=1 ARGS="--trainer.max_steps 100")
	$(PY) -m lightning_apps.launch --stage 1 --nodes $(NODES) --gpus $(GPUS) $(if $(DRY_RUN),--dry-run) -- $(ARGS)

stage2: install  ## train the VLA on the Stage 1 prior (STAGE1_CKPT=..; baseline: STAGE1_CKPT= ARGS="-c configs/ablations/no_prior.yaml")
	$(PY) -m lightning_apps.launch --stage 2 --nodes $(NODES) --gpus $(GPUS) $(if $(DRY_RUN),--dry-run) -- $(if $(STAGE1_CKPT),--stage1_ckpt $(STAGE1_CKPT)) $(ARGS)

eval: install  ## closed-loop evaluation (CKPT=path)
	$(VENV)/bin/actionprior eval --ckpt $(CKPT) --suite sim-default --episodes-per-task $(EPISODES) --workers $(WORKERS)

bench: install  ## throughput and latency benchmarks (figures, not tests)
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/inference_latency.py

bench-train: install  ## Stage 2 training throughput/MFU/memory matrix (+ loader, Stage 1 share); GPU: 2B, CPU: tiny
	$(PY) -m benchmarks.train_throughput $(ARGS)

bench-gpu: install  ## every scale benchmark on a GPU machine in ~10 min (training matrix + 2B latency) -> runs/bench/gpu_session
	PY=$(PY) bash benchmarks/gpu_session.sh

reproduce: install  ## the paper's claims as one resumable study -> runs/reproduce/report.md (~142 min; ARGS=--quick: ~41 min; ARGS=--estimate)
	$(PY) -m actionprior.study $(ARGS)

LIBERO_VENV ?= .venv-libero
libero-env: $(LIBERO_VENV)/.installed  ## LIBERO's own venv (robosuite 1.4, no torch) for `actionprior eval-libero`

$(LIBERO_VENV)/.installed: scripts/libero_env.sh
	bash scripts/libero_env.sh $(LIBERO_VENV)
	@touch $@

clean-runs:  ## delete training runs (not datasets)
	rm -rf runs lightning_logs
