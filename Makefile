# mmdata: `make demo` and `make test` are all a fresh machine needs; both create the venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel here; a GPU machine overrides, e.g. make install TORCH=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
CONFIG ?= pipelines/demo.yaml
ARGS ?=
PYTEST_ARGS ?= -n 2 --dist loadfile
STAMP := $(VENV)/.installed

# every stage is `make <stage> CONFIG=pipelines/....yaml [ARGS="--overwrite ..."]`
STAGES := download filter dedup interleaved text clipscore recaption shards check

.PHONY: install test demo bench lint clean run train eval ablate report chromium $(STAGES)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# pin whatever torch was installed, so no later requirement can swap in another build
	grep -v '^torch==' constraints.txt > $(VENV)/constraints.txt
	$(PY) -c 'import torch; print("torch==" + torch.__version__)' >> $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test,bench]"
	touch $@

# the report test opens the report in the distribution's Chromium (playwright drives it, no browser download)
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)
chromium:
	@if [ -z "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-browser; }; \
	  else echo "make: chromium is missing; install it (apt-get install chromium) for tests/test_report.py" >&2; exit 2; fi; fi

install: $(STAMP)

test: install chromium
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m mmdata demo --config pipelines/demo.yaml $(ARGS)

bench: install
	set -e; for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f; done

lint: install
	$(PY) -m ruff check mmdata tests benchmarks docs/experiments

run: install
	$(PY) -m mmdata run --config $(CONFIG) $(ARGS)

# make train CONFIG=pipelines/mm1-tiny.yaml [ARGS="--set train.steps=50"]; several GPUs: torchrun --nproc-per-node N -m mmdata train ...
train: CONFIG = $(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),pipelines/mm1-tiny.yaml)
train: install
	$(PY) -m mmdata train --config $(CONFIG) $(ARGS)

# evaluation: the demo's trained model by default; make eval CONFIG=pipelines/eval-coco.yaml ARGS="--model ..."
eval: CONFIG = $(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),pipelines/eval-demo.yaml)
eval: install
	$(PY) -m mmdata eval --config $(CONFIG) $(ARGS)

# MM1's ablations at toy scale (docs/eval.md): make ablate [ARGS="--scale 10"]
ablate: CONFIG = $(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),pipelines/ablate.yaml)
ablate: install
	$(PY) -m mmdata ablate --config $(CONFIG) $(ARGS)

# the HTML report of a workdir: make report [WORKDIR=work/demo] [ARGS="--out report.html"]
WORKDIR ?= work/demo
report: install
	$(PY) -m mmdata report $(WORKDIR) $(ARGS)

$(STAGES): install
	$(PY) -m mmdata $@ --config $(CONFIG) $(ARGS)

clean:
	rm -rf work .pytest_cache
