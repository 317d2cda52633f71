# xaibench — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xaibench-installed
LIMIT ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
DATA_ARGS ?=
REPRODUCE_ARGS ?=
TABLES_ARGS ?=

help: ## Show this help
	@grep -E '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch and torchvision are resolved together from the registry (a matching pair; the CUDA build runs on CPU)
	$(BIN)/python -m pip install -e ".[dev]"
	# lxt (the AttnLRP authors' package, the tests' oracle) without its declared heavy deps (bitsandbytes,
	# open_clip_torch, accelerate, zennit): the tests load only its rules and patches, which need torch alone
	$(BIN)/python -m pip install --no-deps "lxt==2.1"
	touch $(STAMP)

install: $(STAMP) ## Build .venv from nothing but python3 and install xaibench with dev tools

test: install ## Run the fast test suite (no network, no GPU needed)
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: install ## Run every test, slow ones included
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, and the layer contracts (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/lint_imports.py

format: install ## Apply ruff format and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install ## Run the default benchmarks (image and text) offline and print their tables
	$(BIN)/xaibench

data: install ## Fetch gtsegs_ijcv.mat, ERASER movies and ViT-B/16 weights into $XAIBENCH_DATA (~/.cache/xaibench/data)
	$(BIN)/xaibench-data $(DATA_ARGS)

reproduce-cvpr21: install ## Run the CVPR 2021 sweeps (LIMIT=N: first N samples each), then build results/cvpr21
	$(BIN)/xaibench-reproduce $(if $(LIMIT),--limit $(LIMIT)) $(REPRODUCE_ARGS)

tables: install ## Rebuild results/cvpr21 (tables, figures) from the run records under outputs/cvpr21
	$(BIN)/xaibench-tables $(TABLES_ARGS)

bench: install ## Time every method vs a forward (vit_base, bert_base; CPU, CUDA), rounding divergence, memory -> results/bench/
	$(BIN)/python -m xaibench.apps.bench $(BENCH_ARGS)

clean: ## Remove run outputs and caches of this checkout (not .venv)
	rm -rf outputs .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

.PHONY: help install test test-all lint format demo data reproduce-cvpr21 tables bench clean
