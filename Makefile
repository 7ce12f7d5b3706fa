# zsad: every target installs into .venv first when it is missing, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here, not in pyproject, so cluster users can keep the CUDA build they have.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install lint test test-slow test-slurm docs ad-demo fast-sweep bench-tiles train-celeba eval-all eval-published demo ablate real32 bench bench-detector bench-gpu clean

help: $(BIN)/zsad ## list the targets (installs .venv first if missing)
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/zsad: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/zsad

install: $(BIN)/zsad ## create .venv and install zsad with its dev extras

lint: $(BIN)/zsad ## ruff over the package, tests, benchmarks and experiments (pyproject.toml [tool.ruff])
	$(BIN)/ruff check zsad tests bench experiments docs/hooks.py

test: $(BIN)/zsad ## run the test suite (the command CI runs)
	$(BIN)/python -m pytest -q tests

test-slow: $(BIN)/zsad ## run the tests marked slow
	$(BIN)/python -m pytest -q -m slow tests

test-slurm: $(BIN)/zsad ## run the Slurm tests (starts a one-node cluster on localhost)
	$(BIN)/python -m pytest -q -m slurm tests

docs: $(BIN)/zsad ## build the documentation site offline (outputs/site)
	$(BIN)/mkdocs build --strict

train-celeba: $(BIN)/zsad ## train the base DDPM on CelebA 32x32 (ARGS="key=value ..." to override)
	$(BIN)/zsad train -c conf/train/celeba32.yaml $(ARGS)

eval-all: $(BIN)/zsad ## run the zero-shot benchmark (CKPT=path/to/last.ckpt)
	$(BIN)/zsad evaluate -c conf/eval/paper12.yaml $(if $(CKPT),backbone.path=$(CKPT)) $(ARGS)

eval-published: $(BIN)/zsad ## the benchmark with DiffPath's published CelebA-32 checkpoint
	$(BIN)/zsad evaluate -c conf/eval/paper12_diffpath_celeba32.yaml $(ARGS)

demo: $(BIN)/zsad ## train + evaluate end to end on built-in data, CPU, a few minutes
	$(BIN)/zsad demo $(ARGS)

ablate: $(BIN)/zsad ## one table for many settings of a scorer (CONFIG=conf/ablate/demo_v2.yaml)
	$(BIN)/zsad ablate -c $(or $(CONFIG),conf/ablate/demo_v2.yaml) $(ARGS)

real32: $(BIN)/zsad ## the 32 px real-image benchmark: train ~1 h on CPU, evaluate, ablate (experiments/real32/)
	bash experiments/real32/run.sh

ad-demo: $(BIN)/zsad ## offline industrial defect benchmark: MVTec-layout data from package images, fit + test (outputs/ad-demo/)
	bash experiments/ad_demo/run.sh $(ARGS)

fast-sweep: $(BIN)/zsad ## the fast preset's sweep on both defect benchmarks (ad-demo and Perlin) at 128 px, paired Δ, RULE.md's decision (outputs/fast_preset/)
	bash experiments/fast_preset/run.sh $(ARGS)

bench: $(BIN)/zsad ## CPU speed: scorer images/s before/after the fast path, GMM selection time, SCOPED's JVP cost (outputs/bench/)
	$(BIN)/python bench/bench_scorers.py $(ARGS)
	$(BIN)/python bench/bench_jvp.py

bench-tiles: $(BIN)/zsad ## CPU cost of localisation by tiles: one 256 px image at the default and the fast preset (outputs/bench/)
	$(BIN)/python bench/bench_tiles.py $(ARGS)
	$(BIN)/python bench/bench_tiles.py --preset fast --out outputs/bench/tiles_fast.json

bench-detector: $(BIN)/zsad ## end to end: AnomalyDetector.fit on 12 normal 256 px images, score 10 one by one, fast preset (~10 min; ARGS="--preset default" for hours)
	$(BIN)/python bench/bench_detector.py $(ARGS)

bench-gpu: $(BIN)/zsad ## GPU speed: network evals/s by batch, precision, compilation; pipeline images/s (outputs/bench/)
	$(BIN)/python bench/bench_gpu.py $(ARGS)

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache
