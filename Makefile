# facegan — two commands for a fresh machine:
#   make demo   set everything up, build the synthetic demo shards and run the main job on them
#   make test   set everything up and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= demo_out

# Nothing may leave this machine: no usage stats, no cloud-metadata probes (Ray's dashboard skips
# them when $$HOME/ray_bootstrap_config.yaml exists; facegan.launch writes it), W&B offline.
export RAY_USAGE_STATS_ENABLED := 0
export RAY_USAGE_STATS_REPORT_URL := http://127.0.0.1:9/
export WANDB_MODE ?= offline
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test test-fast demo lock clean bench

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/facegan shards build shards/synthetic_demo.yaml --out $(OUT)/shards
	$(VENV)/bin/facegan shards verify $(OUT)/shards
	$(VENV)/bin/facegan shards inspect $(OUT)/shards --preview $(OUT)/preview.png
	$(VENV)/bin/facegan shards stream $(OUT)/shards --batches 100 --batch-size 128 --workers 2

bench: install
	$(PY) benchmarks/bench_build.py
	$(PY) benchmarks/bench_stream.py

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^facegan' > requirements.lock.new
	{ head -2 requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp && rm requirements.lock.new && mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(OUT) .pytest_cache
