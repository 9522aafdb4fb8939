# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned dependency tree (requirements.lock) first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pixlake-installed
DEMO_DB ?= ./pixlake.db
DEMO_DATA ?= demo-data
DEMO_OUT ?= demo-output
DEMO_MODEL ?= --model pixlake-tiny --pretrained none

.PHONY: install test demo bench clean

install: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel cache via pip.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	rm -rf $(DEMO_DATA) $(DEMO_OUT) $(DEMO_DB)
	$(BIN)/python -m pixlake.platform.synthetic --out $(DEMO_DATA)/images --n 256 --seed 0
	$(BIN)/pixlake embed $(DEMO_DATA)/images --db $(DEMO_DB) $(DEMO_MODEL) --report $(DEMO_OUT)/embed-report.json
	@echo; echo "== image -> image: the query image itself should come first"
	$(BIN)/pixlake search --db $(DEMO_DB) $(DEMO_MODEL) --image $(DEMO_DATA)/images/00000.png -k 5
	@echo; echo "== text -> image (random-weight model until the demo model lands: ranking is not meaningful yet)"
	$(BIN)/pixlake search --db $(DEMO_DB) $(DEMO_MODEL) --text "a large red circle" -k 5

bench: $(STAMP)
	$(BIN)/python bench/embed_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_OUT) $(DEMO_DB) .pytest_cache
