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
	$(BIN)/python -m pip install -q -e '.[test,evaluators,spatial]'
	touch $@

# The main job: cross-species integration of the embedded human + mouse pancreas cells (pretrain -> align -> evaluate).
demo: $(BIN)/stagekit
	$(BIN)/stagekit demo -o $(DEMO)

test: $(BIN)/stagekit
	$(BIN)/ruff check stagekit tests benchmarks scripts
	$(BIN)/python -m pytest -q

bench: $(BIN)/stagekit
	$(BIN)/python benchmarks/vae_throughput.py
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
