# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE ?= full
TABLE1 := $(if $(filter smoke cpu,$(SCALE)),table1_$(SCALE),table1)
# The paper's columns; the cpu sweep folder also holds the extended table's methods.
PAPER_COLUMNS := before,affine,syn,ct,mr,dual,truth

.PHONY: install demo test test-all figure reproduce-table1 reproduce-table1-extended ablation-cpu keep-runs pairs-vs-exact \
	pairs-vs-exact-cpu clean

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

# The paper's Table 1: 5 methods x 5 folds, then the aggregated table. SCALE=cpu: the 2 mm phantom with the
# CPU recipe (about 3 h on 2 cores, resumable); SCALE=smoke: minutes, the harness only (its networks do not learn).
# Each finished job's metrics.json and resolved config are kept in experiments/table1/runs/ (small, committed).
reproduce-table1: $(STAMP)
	$(BIN)/intermod-train -m experiment=$(TABLE1)
	$(MAKE) keep-runs SWEEP=$(TABLE1)
	$(BIN)/intermod-table1 outputs/multiruns/$(TABLE1) --out-dir experiments/table1 --name $(TABLE1) \
		--methods $(PAPER_COLUMNS)

# Issue 15's Table 1 at the cpu scale: the paper's five methods, elastix, ConvexAdam, Dual + refinement and the
# diffeomorphic Dual, in table1_cpu's folder (what SCALE=cpu finished is skipped).
reproduce-table1-extended: $(STAMP)
	$(BIN)/intermod-train -m experiment=table1_cpu_extended
	$(BIN)/intermod-train -m experiment=table1_cpu method=dual model.integration_steps=7 fold=0,1,2,3,4
	$(MAKE) keep-runs SWEEP=table1_cpu
	$(BIN)/intermod-table1 outputs/multiruns/table1_cpu --out-dir experiments/table1 --name table1_cpu_extended

keep-runs:
	cd outputs/multiruns/$(SWEEP) && for f in $$(find . -name metrics.json -o -name failed.json); do \
		d=$(CURDIR)/experiments/table1/runs/$(SWEEP)/$$(dirname $$f); mkdir -p $$d; \
		cp $$f $$(dirname $$f)/config_resolved.yaml $$d/; done

# Training on intermod-pair's pairs vs on the phantom's exact ones, at the demo's scale (folds 0-2), and the
# smoke Table 1 both ways: experiments/pairing/. About 1.5 h on 2 CPU cores, most of it pairing 15 subjects.
pairs-vs-exact: $(STAMP)
	$(BIN)/intermod-train -m experiment=demo name=demo_exact_pairs fold=0,1,2
	$(BIN)/intermod-pair data/phantom_small data/phantom_small_made
	$(BIN)/intermod-train -m experiment=demo_made_pairs fold=0,1,2
	$(BIN)/python experiments/pairing/compare_tables.py outputs/multiruns/demo_exact_pairs \
		outputs/multiruns/demo_made_pairs --out experiments/pairing/demo_made_vs_exact.md
	$(BIN)/intermod-train -m experiment=table1_smoke
	$(BIN)/intermod-pair data/phantom_tiny data/phantom_tiny_made
	$(BIN)/intermod-train -m experiment=table1_smoke_made_pairs
	$(BIN)/python experiments/pairing/compare_tables.py outputs/multiruns/table1_smoke \
		outputs/multiruns/table1_smoke_made_pairs --out experiments/pairing/table1_smoke_made_vs_exact.md

# The same at the cpu scale: Table 1 cpu's learned columns trained on made pairs (pairing 15 subjects about
# 40 min, then 15 jobs of 35-80 min in float32 on 2 cores; resumable), compared with the exact-pair runs kept
# in experiments/table1/runs/table1_cpu on the folds both have. experiments/pairing/.
pairs-vs-exact-cpu: $(STAMP)
	test -d data/phantom_small_made || $(BIN)/intermod-pair data/phantom_small data/phantom_small_made
	$(BIN)/intermod-train -m experiment=table1_cpu_made_pairs
	$(MAKE) keep-runs SWEEP=table1_cpu_made_pairs
	$(BIN)/intermod-table1 outputs/multiruns/table1_cpu_made_pairs --out-dir experiments/pairing \
		--name table1_cpu_made_pairs --methods before,ct,mr,dual
	$(BIN)/python experiments/pairing/compare_tables.py experiments/table1/runs/table1_cpu \
		experiments/table1/runs/table1_cpu_made_pairs --out experiments/pairing/table1_cpu_made_vs_exact.md

figure: $(STAMP)
	$(BIN)/intermod-figure

clean:
	rm -rf outputs multirun .pytest_cache

# Issue 14's ablation at the cpu scale (conf/experiment/ablation_cpu.yaml): Eq. 4's weights and the similarity,
# one factor at a time, folds 0-2, the recipe as the reference column; resumable. experiments/ablations/.
ablation-cpu: $(STAMP)
	$(BIN)/intermod-train -m experiment=ablation_cpu
	$(BIN)/intermod-table1 outputs/multiruns/ablation_cpu --out-dir experiments/ablations --name ablation_cpu \
		--reference "dual[ablation=recipe]"
