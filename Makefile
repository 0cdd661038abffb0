# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE ?= full
TABLE1 := $(if $(filter smoke,$(SCALE)),table1_smoke,table1)

.PHONY: install demo test test-all figure reproduce-table1 clean

install: $(STAMP)

# torch first: pinned to the wheel that lies on disk, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/intermod-train experiment=demo

# The paper's Table 1: 5 methods x 5 folds, then the aggregated table. SCALE=smoke: minutes on a CPU.
reproduce-table1: $(STAMP)
	$(BIN)/intermod-train -m experiment=$(TABLE1)
	$(BIN)/intermod-table1 outputs/multiruns/$(TABLE1) --out-dir experiments/table1 --name $(TABLE1)

figure: $(STAMP)
	$(BIN)/intermod-figure

clean:
	rm -rf outputs multirun .pytest_cache
