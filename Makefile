# avsc-pipeline: the two commands a new user needs are `make demo` and `make test`.
# `make features`, `make train` and `make eval` run the paper's recipe on the real data set.
# Each creates .venv when missing and installs the package with its test extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The torch pair installable on the development machines; set TORCH_SPEC= to keep the torch
# already in the environment (e.g. a CUDA build on a GPU server).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

DATA ?= data/TAU-urban-audio-visual-scenes-2021-development
# Where `make download` puts the data set (DATA_ROOT/TAU-urban-audio-visual-scenes-2021-development) and its
# zips (DATA_ROOT/packages, removed once unpacked), fetching DOWNLOAD_JOBS files at once.
DATA_ROOT ?= data
DOWNLOAD_JOBS ?= 4
FEATURES ?= data/features
JOBS ?= 2
# Most segments per shard; empty uses the library's default (shard_engine.DEFAULT_SHARD_SIZE).
SHARD_SIZE ?=
SHARD_SIZE_ARG = $(if $(SHARD_SIZE),--shard-size $(SHARD_SIZE))
DEMO ?= data/demo
DEMO_FEATURES ?= data/demo-features
DEMO_CLIPS ?= 10
DEMO_RUNS ?= runs/demo
# Training: the recipe, its steps (models) run in order into RUN/<step>, the device, and a launcher for
# several GPUs or nodes, e.g. LAUNCH="torchrun --standalone --nproc_per_node 8 --no-python".
CONFIG ?= configs/paper.yaml
STEPS ?= audio joint
RUN ?= runs/paper
DEVICE ?= auto
LAUNCH ?=
TRAIN_ARGS ?=
# 1: `make features` and `make demo` add offline-augmented train shards (OUT/train-aug); 0 skips them.
AUGMENT ?= 1

# `make ablations TABLE=1|2|3|4 [ROWS="a b"] FEATURES=DIR RUN=DIR [CONFIG=...]`: a table of the paper (4: beyond it),
# trained and scored beside its figures (RUN/table-N.md); CONFIG is layered on top of every row.
TABLE ?= 3
ROWS ?=
# Rows trained at once on every visible GPU (on the CPU: processes), each its own seeded process;
# the table is the same as with 1. PLAN=1 lists the steps with a timed estimate and trains nothing.
PER_DEVICE ?= 1
PLAN ?=
.PHONY: ablations
.PHONY: install test demo demo-features demo-train demo-eval features train eval bench clean-demo help gpu-check

help:
	@echo "make help           this list (every target)"
	@echo "make install        create $(VENV) and install torch (TORCH_SPEC) and this package with its test extras"
	@echo "make demo           generate the demo data set, extract its features, train and score three small models:"
	@echo "make demo-features    generate DEMO=$(DEMO) ($(DEMO_CLIPS) clips per class), extract it into DEMO_FEATURES=$(DEMO_FEATURES)"
	@echo "make demo-train       train the audio-only, video-only and joint models into DEMO_RUNS=$(DEMO_RUNS)"
	@echo "make demo-eval        score each on the demo's evaluate split, then table them in DEMO_RUNS/report"
	@echo "make clean-demo     remove the demo data set, its features and its runs"
	@echo "make test           run the test suite"
	@echo "make download       download the TAU data set (108 GB) into DATA_ROOT=$(DATA_ROOT)"
	@echo "make features       extract the TAU data set: DATA=$(DATA) FEATURES=$(FEATURES) JOBS=$(JOBS)"
	@echo "                    then augment its train split into FEATURES/train-aug (AUGMENT=0 skips it)"
	@echo "make train          train STEPS=\"$(STEPS)\" of CONFIG=$(CONFIG) on FEATURES=$(FEATURES) into RUN=$(RUN)/<step>"
	@echo "                    (a rerun resumes each step from its last.pt), then score them (make eval)"
	@echo "make eval           score RUN's best.pt on FEATURES/evaluate and predict FEATURES/test"
	@echo "make ensemble       score RUNS=\"DIR DIR ...\" (each RUN/best.pt) as one ensemble on FEATURES/evaluate, then report"
	@echo "make ablations      train and score a table of the paper, TABLE=$(TABLE) (ROWS=\"a b\" for some rows), into RUN/table-N.md"
	@echo "                    PER_DEVICE=K trains K rows at once per GPU; PLAN=1 estimates the time and trains nothing"
	@echo "make bench          run the benchmarks in bench/"
	@echo "make gpu-check      the prepared GPU check (bench/gpu_check.py) into OUT=$(OUT)"

$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install -q $(TORCH_SPEC))
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

# Three small CPU models on the demo: audio alone, video alone, both. Each modality alone confuses
# five pairs of classes; only the joint model separates all ten (see avsc_pipeline/demo.py).
demo-train: install
	for run in audio-only video-only joint; do \
	  step=$$(case $$run in audio-only) echo audio;; video-only) echo video;; *) echo joint;; esac); \
	  $(BIN)/avsc-train $(DEMO_FEATURES) $(DEMO_RUNS)/$$run --overwrite --no-progress --device cpu \
	    --config configs/paper.yaml --config configs/steps/$$step.yaml \
	    --config configs/demo.yaml --config configs/demo/$$step.yaml \
	    --set train.init_from=$$( [ $$step = joint ] && echo $(DEMO_RUNS)/audio-only/best.pt || echo null ) \
	    || exit 1; \
	done

demo-eval: install
	for run in audio-only video-only joint; do \
	  $(BIN)/avsc-eval --checkpoint $(DEMO_RUNS)/$$run/best.pt $(DEMO_FEATURES)/evaluate --device cpu --no-progress \
	    > /dev/null || exit 1; \
	done
	$(BIN)/avsc-report $(DEMO_RUNS)/audio-only $(DEMO_RUNS)/video-only $(DEMO_RUNS)/joint --out $(DEMO_RUNS)/report

demo: demo-features demo-train demo-eval

features: install
	@if [ ! -f "$(DATA)/meta.csv" ]; then \
	  echo "No data set at $(DATA) (expected $(DATA)/meta.csv)."; \
	  echo "Download it (108 GB; resumable, MD5-checked, unpacked into $(DATA_ROOT)/TAU-urban-audio-visual-scenes-2021-development):"; \
	  echo "  make download DATA_ROOT=$(DATA_ROOT)    (= $(BIN)/avsc-features download $(DATA_ROOT))"; \
	  echo "or, where it already is: make features DATA=/path/to/TAU-urban-audio-visual-scenes-2021-development"; \
	  exit 1; \
	fi
	for split in train evaluate test; do \
	  $(BIN)/avsc-features extract $(DATA) $(FEATURES) --split $$split --jobs $(JOBS) $(SHARD_SIZE_ARG) || exit 1; \
	done
	if [ "$(AUGMENT)" != "0" ]; then \
	  $(BIN)/avsc-features augment $(DATA) $(FEATURES) --split train --jobs $(JOBS) $(SHARD_SIZE_ARG) || exit 1; \
	fi
	$(BIN)/avsc-features verify $(FEATURES)

# The TAU Urban Audio-Visual Scenes 2021 development set (Zenodo 4477542) into DATA_ROOT/<its folder>;
# a rerun resumes broken transfers and skips what is in place (avsc-features download --help).
.PHONY: download
download: install
	$(BIN)/avsc-features download $(DATA_ROOT) --jobs $(DOWNLOAD_JOBS)

# One command runs the recipe's steps (avsc-train --steps): everything is checked before the first
# step trains, a finished step is kept, a stopped one resumes from its last.pt (a pre-empted job
# just reruns `make train`), and the joint step starts from RUN/audio/best.pt. Then each step is scored.
# `exec`: avsc-train replaces the recipe's shell, which a SIGTERM to the process group (pre-emption)
# would otherwise kill under it; make then waits for the step to stop and write last.pt.
train: install
	exec $(LAUNCH) $(BIN)/avsc-train $(FEATURES) $(RUN) --config $(CONFIG) --steps "$(STEPS)" --device $(DEVICE) $(TRAIN_ARGS)
	for step in $(STEPS); do $(MAKE) --no-print-directory eval RUN=$(RUN)/$$step FEATURES=$(FEATURES) || exit 1; done
	$(BIN)/avsc-report $(foreach step,$(STEPS),$(RUN)/$(step)) --out $(RUN)/report

# Score one run folder's best.pt on the evaluate split; write the test split's predictions.
eval: install
	@if [ ! -f "$(RUN)/best.pt" ]; then echo "No checkpoint at $(RUN)/best.pt (RUN=$(RUN))."; exit 1; fi
	$(BIN)/avsc-eval --checkpoint $(RUN)/best.pt $(FEATURES)/evaluate --device $(DEVICE)
	if [ -f "$(FEATURES)/test/index.json" ]; then \
	  $(BIN)/avsc-eval --checkpoint $(RUN)/best.pt $(FEATURES)/test --device $(DEVICE) || exit 1; \
	fi

# An ensemble of run folders: each RUN/best.pt's calibrated probabilities averaged (avsc-eval with
# --checkpoint per run) on FEATURES/evaluate into ENSEMBLE_OUT (default: ensemble/ beside the first
# run), then the runs and the ensemble tabled there. ENSEMBLE_ARGS default: the weights that minimize
# the log loss on the runs' validation locations of FEATURES/train (e.g. "--weights 0.5,0.5 --tta swap").
RUNS ?=
ENSEMBLE_OUT ?= $(patsubst %/,%,$(dir $(firstword $(RUNS))))/ensemble
ENSEMBLE_ARGS ?= --weights auto
.PHONY: ensemble
ensemble: install
	@if [ -z "$(strip $(RUNS))" ]; then echo "Give the run folders: make ensemble RUNS=\"DIR DIR ...\" FEATURES=DIR"; exit 1; fi
	$(BIN)/avsc-eval $(foreach run,$(RUNS),--checkpoint $(run)/best.pt) $(FEATURES)/evaluate --out $(ENSEMBLE_OUT) \
	  --device $(DEVICE) --no-progress $(ENSEMBLE_ARGS)
	$(BIN)/avsc-report $(RUNS) $(ENSEMBLE_OUT) --out $(ENSEMBLE_OUT)/report

bench: install
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean-demo:
	rm -rf $(DEMO) $(DEMO_FEATURES) $(DEMO_RUNS)

ablations: install
	$(BIN)/avsc-ablations $(TABLE) $(FEATURES) $(RUN) $(if $(filter-out configs/paper.yaml,$(CONFIG)),--config $(CONFIG)) \
	  $(if $(ROWS),--rows "$(shell echo $(ROWS) | tr ' ' ',')") --device $(DEVICE) --per-device $(PER_DEVICE) \
	  $(if $(PLAN),--plan)

# The GPU check (bench/gpu_check.py): stage two's speed on a GPU in 8.5 minutes or less, each
# section in its own process with a hard time limit, on shards it writes itself; every figure is
# appended to OUT/results.jsonl as it is measured, OUT/gpu_check.md at the end. On a bare GPU
# machine without internet (`pip install --no-deps -e .` done), skip the venv set-up:
#   make gpu-check GPU_CHECK_DEPS= PY=python3 OUT=DIR
OUT ?= runs/gpu-check
GPU_CHECK_DEPS ?= install
gpu-check: $(GPU_CHECK_DEPS)
	$(PY) bench/gpu_check.py --out $(OUT)
