# grpose: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
DEMO ?= runs/demo
CONFIG ?= configs/trainer/cpu.yaml $(DEMO)/configs/base.yaml $(DEMO)/configs/data.yaml configs/method/tiny/grpose_skeleton.yaml
ARGS ?=

EVAL_CONFIG ?= configs/eval/humanart.yaml
TRANSFER_CONFIG ?= configs/eval/transfer_synthetic.yaml
IMAGES ?= runs/predict
BUNDLE ?= runs/demo/bundles/grpose_skeleton-s0
POSE ?= docs/poses/example_openpose.json
PROMPT ?= a person standing, one arm raised
OUT ?= runs/generate

.PHONY: train-configs docs help install lock demo compare compare-transfer compare-pose generate app test test-all test-gpu train eval eval-transfer bench bench-sample bench-detector gpu-wheels gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

install: $(STAMP)  ## set up .venv with grpose and its dependencies (idempotent)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -c "import grpose.graph, dgl"
	touch $(STAMP)

lock:  ## re-resolve the dependencies in a fresh venv and pin them in constraints.txt
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q -e '.[dev]'; \
	{ echo "# Exact versions for 'make install' (pip -c); refresh deliberately with 'make lock'."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable; } > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt

demo: install  ## the main job offline: train and evaluate GRPose, ControlNet, no-pose on synthetic data (CPU)
	$(VENV)/bin/grpose-demo $(ARGS)

compare: install  ## every method (+ GRPose with RePoseDM) on the same base and budget, 3 seeds, mean +- std (CPU)
	$(VENV)/bin/grpose-demo compare $(ARGS)

compare-transfer: install  ## pose transfer: every transfer method (+ RePoseDM guidance) on synthetic pairs, 3 seeds, mean +- std (CPU, ~25 min after make demo)
	$(VENV)/bin/grpose-demo compare-transfer $(ARGS)

compare-pose: install  ## RMPG's claim: top-down baseline / + RMPG / + supervised RMPG, bottom-up with / without, 3 seeds (CPU, ~30 min on one core)
	$(PY) tools/experiments/compare_pose.py $(ARGS)

generate: install  ## images for your own pose: make generate POSE=pose.json|photo.png PROMPT="..." [SOURCE=photo.png for a pose-transfer bundle; BUNDLE=... OUT=... ARGS=...]
	$(VENV)/bin/grpose-generate --bundle $(BUNDLE) --pose "$(POSE)" --prompt "$(PROMPT)" --out $(OUT) $(if $(SOURCE),--source "$(SOURCE)") $(ARGS)

app: install  ## the pose editor app: every bundle under runs/ side by side, in the browser (ARGS="--port 8765 --runs runs")
	$(VENV)/bin/grpose-app $(ARGS)

test: install  ## run the fast test suite (offline, CPU)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install  ## run every test, the slow end-to-end ones too
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

test-gpu: install  ## run the CUDA tests (on a machine with a GPU)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

train: train-configs install  ## fit a model: make train CONFIG="trainer base data method configs" ARGS=... (default: tiny GRPose on the demo's base, CPU)
	$(PY) -m grpose fit $(foreach c,$(CONFIG),--config $(c)) $(ARGS)

train-configs:  # make train's configs exist (checked before any install)
	@for c in $(CONFIG); do if [ ! -f "$$c" ]; then case "$$c" in $(DEMO)/*) \
	  echo "make train: $$c not found: run 'make demo' first (it trains the tiny base and writes the data that make train uses), or give CONFIG=\"...\"" ;; \
	  *) echo "make train: $$c not found" ;; esac; exit 1; fi; done

eval: install  ## score generated images: make eval IMAGES=dir EVAL_CONFIG="configs/eval/humanart.yaml [configs/eval/humanart_papers.yaml]" [WORKERS=n] ARGS=...
	$(VENV)/bin/grpose-eval $(foreach c,$(EVAL_CONFIG),--config $(c)) --images $(IMAGES) $(if $(WORKERS),--num_workers $(WORKERS)) $(ARGS)

eval-transfer: install  ## score pose-transfer results: make eval-transfer IMAGES=dir TRANSFER_CONFIG=configs/eval/transfer_synthetic.yaml [WORKERS=n] ARGS=...
	$(VENV)/bin/grpose-eval transfer $(foreach c,$(TRANSFER_CONFIG),--config $(c)) --images $(IMAGES) $(if $(WORKERS),--num_workers $(WORKERS)) $(ARGS)

bench: install  ## training-step time of each method vs ControlNet (tiny shapes; ARGS="--memory" / "--shape sd15 ...")
	$(PY) tools/benchmarks/bench_step.py $(ARGS)

bench-sample: install  ## sampling time per image of each method vs ControlNet, RePoseDM's cost, T2I features once (ARGS="--shape sd15 ...")
	$(PY) tools/benchmarks/bench_sample.py $(ARGS)

bench-detector: install  ## the papers' detector: images/s, make eval per 100 images, perception step (ARGS="detector|eval|perception ...")
	$(PY) tools/benchmarks/bench_detector.py $(or $(ARGS),detector)

gpu-wheels: install  ## download into .whl/ the wheels a GPU machine without the venv lacks (Python 3.12; ARGS=--no-dgl)
	$(PY) tools/gpu/gpu_wheels.py $(ARGS)

gpu-check:  ## the GPU battery: CUDA tests + step / sampling / eval benchmarks -> gpu_check.{json,md} (ARGS="--out DIR", "--device cpu --tiny")
	$(PY) tools/gpu/gpu_check.py $(ARGS)

docs: install  ## build the documentation site (MkDocs + API reference from the docstrings) into build/site; warnings are errors
	$(PY) -m mkdocs build --strict --quiet

clean:  ## remove build outputs (keeps .venv)
	rm -rf build *.egg-info .pytest_cache
