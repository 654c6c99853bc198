# edge-vision: train -> export -> bench -> gate. Every target installs .venv first, so any of them works on a
# fresh clone. The Makefile passes paths only; hyperparameters live in the YAML configs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
NAME ?= $(basename $(notdir $(CONFIG)))
RUN ?= runs/$(NAME)
GATE ?= configs/gate.yaml
GATE_ARGS ?=
ABLATE_CONFIG ?= experiments/configs/ablate-shift.yaml
PEERS := .venv-peers
DOCKERFILES := docker/cpu/Dockerfile docker/deploy-cpu/Dockerfile docker/jetson/Dockerfile
IMAGE_TAG ?= 0.1.0

.DEFAULT_GOAL := help
.PHONY: help setup qemu arm-env data check-data train export bench gate gate-selftest kernels demo test lint clean distclean compare-ssdlite \
	compare-lraspp compare-yolo compare-yolo-budget ablate-family peers wire-recipe ablate-recipe train-seg thin-diagnose receptive-field robustness ablate-shift results \
	docker-cpu docker-deploy docker-jetson

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG) RUN=$(RUN) GATE=$(GATE)"

setup: $(STAMP) ## create .venv and install the pinned dependencies (skipped when up to date)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# QEMU user-mode emulation runs this .venv under other CPUs' integer kernels (deploy/emulate.py). Installed from
# Debian's packages where we are root with apt-get; elsewhere the checks that need it skip and say why.
qemu: ## install qemu-user-static (Debian, as root) for the kernel-class checks, when missing
	@command -v qemu-x86_64-static >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null) || \
	  echo "qemu: qemu-user-static not installed; emulated CPU classes will be skipped"; }

# The ARM64 userland (deploy/arm64.py): Debian's arm64 Python and the aarch64 wheels of requirements-deploy.txt, run
# under qemu-aarch64 for the phone-CPU profiles. Built without emulation, cached outside the repo by content key.
arm-env: setup qemu ## build the ARM64 userland for the phone-CPU checks (cached in ~/.cache/edge-vision by content)
	@command -v mmdebstrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null) || true; }
	$(PY) -m deploy.arm64 build

data: setup ## generate the synthetic dataset named by the config (skipped when already there)
	$(PY) -m datasets generate --config $(CONFIG)

check-data: data ## per-split images, boxes, classes, sizes vs strides, duplicates; exit 1 on a problem that breaks training
	$(PY) -m datasets check --config $(CONFIG)

train: data ## train the detector and the segmenter into $(RUN)
	$(PY) -m train --config $(CONFIG) --out $(RUN)

export: setup ## ONNX fp32 + INT8 QDQ for both models, with parity checks
	$(PY) -m export --run $(RUN)

bench: setup ## accuracy, latency, memory of every variant -> $(RUN)/bench/report.{md,json} + plots
	$(PY) -m evaluate.bench --run $(RUN)

gate: setup ## 2x2 attribution (preprocessing x quantization) against $(GATE) -> $(RUN)/gate/; exit 1 on failure
	$(PY) -m evaluate.gate --run $(RUN) --config $(GATE) $(GATE_ARGS)

kernels: setup qemu ## INT8 accuracy per CPU kernel class: exact, this CPU, x86 AVX2 / SSE4 and phone ARM under QEMU -> $(RUN)/kernels/
	@$(MAKE) --no-print-directory arm-env || echo "kernels: no ARM64 userland; the phone profiles will be skipped"
	$(PY) -m evaluate.kernels --run $(RUN)

gate-selftest: setup qemu ## inject preprocessing, quantization and runtime faults; the gate must blame each on its stage, 3 runs alike
	$(PY) -m evaluate.gate_selftest --config configs/gate-selftest.yaml --out runs/gate-selftest --fresh --runs 3

demo: setup ## data + train + export + bench + gate on the synthetic dataset, small settings
	$(MAKE) --no-print-directory data train export bench gate CONFIG=$(CONFIG) RUN=$(RUN)

compare-ssdlite: data ## train ours and torchvision SSDLite on the same budget -> runs/compare-ssdlite/results.json
	$(PY) -m experiments.compare_ssdlite --config $(CONFIG) --out runs/compare-ssdlite

peers: ## install Ultralytics (AGPL-3.0) into .venv-peers, apart from .venv, for the YOLO comparisons
	test -x $(PEERS)/bin/yolo || ($(PYTHON) -m venv $(PEERS) && $(PEERS)/bin/pip install --quiet -r requirements-peers.txt)

compare-yolo: setup peers ## ours vs Ultralytics YOLO11n / YOLO26n (run from .venv-peers) on the same budget -> runs/compare-yolo/results.json
	$(PY) -m datasets generate --config experiments/configs/compare-yolo.yaml
	$(PY) -m experiments.compare_yolo --config experiments/configs/compare-yolo.yaml --yolo $(PEERS)/bin/yolo --out runs/compare-yolo

compare-yolo-budget: setup peers ## every preset of ours (fp32 and INT8) vs YOLO11n / YOLO26n at 12, 40 and 80 epochs on 300 scenes -> runs/compare-yolo-budget/ (results, curves, Pareto plot)
	$(PY) -m datasets generate --config experiments/configs/compare-yolo-budget.yaml
	$(PY) -m experiments.compare_yolo --config experiments/configs/compare-yolo-budget.yaml --epochs 12,40,80 \
		--presets configs/models/detector-s.yaml,configs/models/detector-m.yaml --int8 \
		--yolo $(PEERS)/bin/yolo --out runs/compare-yolo-budget $(COMPARE_ARGS)

ablate-family: setup peers ## what closes the strict-IoU gap at 80 epochs (model, input, DFL, assigner), timed beside YOLO11n / YOLO26n -> runs/ablate-family/
	$(PY) -m datasets generate --config experiments/configs/compare-yolo-budget.yaml
	$(PY) -m experiments.ablate_recipe --config experiments/configs/ablate-family.yaml --out runs/ablate-family \
		--peers yolo11n,yolo26n --yolo $(PEERS)/bin/yolo $(ABLATE_ARGS)

ablate-recipe: data ## one detector per arm of experiments/configs/ablate-recipe.yaml (assignment, loss, mosaic, scale) -> runs/ablate-recipe/results.json
	$(PY) -m experiments.ablate_recipe --config experiments/configs/ablate-recipe.yaml --out runs/ablate-recipe $(ABLATE_ARGS)

compare-lraspp: data ## train ours and torchvision LR-ASPP segmenters on the same budget -> runs/compare-lraspp/results.json
	$(PY) -m experiments.compare_lraspp --config $(CONFIG) --out runs/compare-lraspp$(if $(filter-out demo,$(NAME)),-$(NAME))

results: setup ## docs/results.md from the results files filed in docs/results/ (file a run's: python -m experiments.results --take FILE)
	$(PY) -m experiments.results

wire-recipe: setup ## the thin-structure recipe on generated 1-px power lines, 3 seeds, ODS / OIS at 2 px and BSDS -> runs/wire-recipe/
	$(PY) -m datasets generate --config configs/wires.yaml
	$(PY) -m experiments.thin_recipe --config configs/wires.yaml --out runs/wire-recipe --seeds 3

thin-diagnose: setup ## why thin structures are missed: stride ceiling, label shift, width recall -> $(RUN)/thin_diagnose.json
	$(PY) -m experiments.thin_diagnose --run $(RUN)

robustness: setup ## corruption suite (severities 1-5) and shifted splits per model -> $(RUN)/robustness/
	$(PY) -m evaluate.robustness --run $(RUN)

ablate-shift: data ## train with augment none vs shift on the same budget; clean vs shifted -> runs/ablate-shift/results.json
	$(PY) -m experiments.ablate_shift --config $(ABLATE_CONFIG) --out runs/ablate-shift $(ABLATE_ARGS)

train-seg: data ## train only the segmenter into $(RUN)
	$(PY) -m train --config $(CONFIG) --out $(RUN) --task segmenter

receptive-field: data ## per-level stride and receptive field of the detector vs the dataset's box sizes
	$(PY) -m experiments.receptive_field --config $(CONFIG)

lint: setup ## ruff over the code, hadolint over the Dockerfiles (fails on any finding above info)
	$(PY) -m ruff check .
	$(VENV)/bin/hadolint --failure-threshold warning $(DOCKERFILES)

test: setup qemu ## lint, the test suite, then the gate self-test
	@$(MAKE) --no-print-directory arm-env || echo "test: no ARM64 userland; the phone-CPU tests will be skipped"
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory gate-selftest

docker-cpu: ## build the workstation/CI image (x86-64): edge-vision/cpu
	docker build -f docker/cpu/Dockerfile -t edge-vision/cpu:$(IMAGE_TAG) .

docker-deploy: ## build the small ONNX Runtime field image: edge-vision/deploy-cpu
	docker build -f docker/deploy-cpu/Dockerfile -t edge-vision/deploy-cpu:$(IMAGE_TAG) .

docker-jetson: ## build the Jetson (JetPack 6, TensorRT) field image for linux/arm64: edge-vision/jetson
	docker buildx build --platform linux/arm64 -f docker/jetson/Dockerfile -t edge-vision/jetson:$(IMAGE_TAG) --load .

clean: ## remove outputs (runs/, data/)
	rm -rf runs data .pytest_cache .ruff_cache

distclean: clean ## also remove .venv
	rm -rf $(VENV) $(PEERS)
