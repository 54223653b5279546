# avsc-pipeline: the two commands a new user needs are `make demo` and `make test`.
# Each creates .venv when missing and installs the package with its test extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The torch pair installable on the development machines; set TORCH_SPEC= to keep the torch
# already in the environment (e.g. a CUDA build on a GPU server).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

DATA ?= data/TAU-urban-audio-visual-scenes-2021-development
FEATURES ?= data/features
JOBS ?= 2
SHARD_SIZE ?= 512
DEMO ?= data/demo
DEMO_FEATURES ?= data/demo-features
DEMO_CLIPS ?= 8
# 1: `make features` and `make demo` add offline-augmented train shards (OUT/train-aug); 0 skips them.
AUGMENT ?= 1

.PHONY: install test demo demo-features features bench clean-demo help

help:
	@echo "make demo      generate the demo data set and extract its features (data/demo*)"
	@echo "make test      run the test suite"
	@echo "make features  extract the TAU data set: DATA=$(DATA) FEATURES=$(FEATURES) JOBS=$(JOBS)"
	@echo "               then augment its train split into FEATURES/train-aug (AUGMENT=0 skips it)"
	@echo "make bench     run the benchmarks in bench/"

$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

$(DEMO)/meta.csv: | install
	$(BIN)/avsc-features demo-data $(DEMO) --clips-per-class $(DEMO_CLIPS)

demo-features: install $(DEMO)/meta.csv
	for split in train evaluate test; do \
	  $(BIN)/avsc-features extract $(DEMO) $(DEMO_FEATURES) --split $$split --jobs $(JOBS) || exit 1; \
	done
	if [ "$(AUGMENT)" != "0" ]; then \
	  $(BIN)/avsc-features augment $(DEMO) $(DEMO_FEATURES) --split train --jobs $(JOBS) || exit 1; \
	fi
	$(BIN)/avsc-features verify $(DEMO_FEATURES)

demo: demo-features

features: install
	@if [ ! -f "$(DATA)/meta.csv" ]; then \
	  echo "No data set at $(DATA) (expected $(DATA)/meta.csv)."; \
	  echo "Download TAU Urban Audio-Visual Scenes 2021, Development dataset (https://zenodo.org/record/4477542),"; \
	  echo "unzip every archive into $(DATA), or run: make features DATA=/path/to/it"; \
	  exit 1; \
	fi
	for split in train evaluate test; do \
	  $(BIN)/avsc-features extract $(DATA) $(FEATURES) --split $$split --jobs $(JOBS) --shard-size $(SHARD_SIZE) || exit 1; \
	done
	if [ "$(AUGMENT)" != "0" ]; then \
	  $(BIN)/avsc-features augment $(DATA) $(FEATURES) --split train --jobs $(JOBS) --shard-size $(SHARD_SIZE) || exit 1; \
	fi
	$(BIN)/avsc-features verify $(FEATURES)

bench: install
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean-demo:
	rm -rf $(DEMO) $(DEMO_FEATURES)
