# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create their own virtual environment in .venv (torch pinned: an unpinned torch pulls a CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= demo

.PHONY: demo test lint bench clean

$(BIN)/stagekit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The clustering chain on the embedded pancreas cells (350 cells, 5 types x 2 species). Without cross-species
# alignment the cells cluster by type and species, so the report scores against obs.initial_cluster (type_species).
demo: $(BIN)/stagekit
	mkdir -p $(DEMO)
	$(BIN)/stagekit pretrain --preset vae stagekit/demo_data/pancreas_human_mouse.h5ad \
		--label-key initial_cluster --set training.batch_size=64 -q -o $(DEMO)/pretrain.stk
	$(BIN)/stagekit cluster-search $(DEMO)/pretrain.stk -q -o $(DEMO)/clusters.stk
	$(BIN)/stagekit finetune --preset dec $(DEMO)/clusters.stk --set training.batch_size=64 -q -o $(DEMO)/dec.stk
	$(BIN)/stagekit evaluate $(DEMO)/dec.stk -o $(DEMO)/report
	$(BIN)/stagekit info $(DEMO)/dec.stk

test: $(BIN)/stagekit
	$(BIN)/ruff check stagekit tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(BIN)/stagekit
	$(BIN)/python benchmarks/vae_throughput.py
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
