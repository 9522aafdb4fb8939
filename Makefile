# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned dependency tree (requirements.lock) first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pixlake-installed
DEMO_DB ?= ./pixlake.db
DEMO_KEYS := $(DEMO_DB:.db=.governance)
DEMO_DATA ?= demo-data
DEMO_OUT ?= demo-output
DEMO_TRAIN_N ?= 20000
DEMO_TRAIN_EPOCHS ?= 10

.PHONY: install test test-fast demo demo-model bench clean

install: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel cache via pip.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The whole suite: what CI runs (.ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30 tests

# Everyday tier: no Ray cluster, Serve app, Milvus server or subprocess (tests/conftest.py
# fails a test of this tier that starts one).
test-fast: $(STAMP)
	PIXLAKE_TEST_TIER=fast $(BIN)/python -m pytest -q -m "not slow" --durations=15 tests

# The whole platform on the embedded default: corpus -> Ray embed job -> evaluation ->
# Ray Serve HTTP queries -> clean shutdown (pixlake/jobs/demo.py).
demo: $(STAMP)
	rm -rf $(DEMO_DATA) $(DEMO_OUT) $(DEMO_DB) $(DEMO_KEYS)
	$(BIN)/python -m pixlake.jobs.demo --data $(DEMO_DATA) --out $(DEMO_OUT) --db $(DEMO_DB)

# Rebuild the bundled demo model (pixlake/platform/weights/pixlake-demo.pt) from fixed seeds.
demo-model: $(STAMP)
	rm -rf build/demo-train build/demo-model
	$(BIN)/pixlake corpus --out build/demo-train --n $(DEMO_TRAIN_N) --seed 0 --holdout 0.05
	$(BIN)/pixlake train build/demo-train/manifest.parquet --out build/demo-model --model pixlake-demo \
		--epochs $(DEMO_TRAIN_EPOCHS) --batch-size 128 --lr 2e-3 --seed 0
	mkdir -p pixlake/platform/weights
	cp build/demo-model/model.pt pixlake/platform/weights/pixlake-demo.pt

bench: $(STAMP)
	$(BIN)/python bench/embed_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_OUT) $(DEMO_DB) $(DEMO_KEYS) build .pytest_cache
