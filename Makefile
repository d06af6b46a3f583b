# capsrun - `make help` lists the targets. Every target creates the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CAPSRUN := $(VENV)/bin/capsrun
DEMO_DIR ?= outputs/demo
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo train bench test test-unit test-all lint tensorboard docs

help: ## Show this list of targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install capsrun (editable) with test tools

demo: install ## Train a CapsNet (8 primary capsule maps) for 3 epochs on 10,000 bundled MNIST digits, then eval and visualize it (about 3 minutes on 2 CPU cores)
	rm -rf $(DEMO_DIR)
	$(CAPSRUN) train experiment=demo hydra.run.dir=$(DEMO_DIR)
	$(CAPSRUN) eval run_dir=$(DEMO_DIR)
	$(CAPSRUN) visualize run_dir=$(DEMO_DIR)
	@echo
	@echo "Run folder:        $(DEMO_DIR)  (metrics.json, eval.json, checkpoints/, train.log)"
	@echo "Figures:           $(DEMO_DIR)/reconstructions.png perturbations.png capsule_lengths.png confusion_matrix.png misclassified.png"
	@echo "TensorBoard logs:  $(DEMO_DIR) (runs demo, demo/train, demo/val)  ->  make tensorboard"

train: install ## Train with Hydra overrides, e.g. make train ARGS="epochs=50 model.routing_iterations=1"
	$(CAPSRUN) train $(ARGS)

bench: install ## Speed on this machine: train/eval img/s vs a plain reference CapsNet and the conv-only bound (bench.json), e.g. make bench ARGS="batch_sizes=[128]"
	$(CAPSRUN) bench $(ARGS)

test: install ## Run the unit and integration tests, slow ones skipped (about 25-35 minutes on 2 CPU cores)
	$(PY) -m pytest -m "not slow" tests/unit tests/integration $(ARGS)

test-unit: install ## Run the in-process unit tests only (under 2 minutes)
	$(PY) -m pytest -m "not slow" tests/unit $(ARGS)

test-all: install ## Run every test, the slow ones included
	$(PY) -m pytest tests/unit tests/integration $(ARGS)

lint: install ## Check the code with ruff and the layering with import-linter (setup.cfg [importlinter])
	$(VENV)/bin/ruff check capsrun tests
	$(VENV)/bin/lint-imports

tensorboard: install ## Serve TensorBoard over all runs in outputs/
	$(VENV)/bin/tensorboard --logdir outputs

docs: install ## Build the documentation site (mkdocs, strict)
	$(VENV)/bin/mkdocs build --strict
