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

.PHONY: install chromium test test-fast demo ray-up ray-down lock clean bench

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Headless Chromium renders the sweep report in the tests (Debian's package; skipped when present).
# Needs the package registry and root (or sudo); without it the report's browser check is skipped.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium \
			|| echo "warning: could not install chromium; the sweep report's browser test will be skipped"; \
	else echo "warning: no apt-get; install chromium to run the sweep report's browser test"; fi

# Two pytest sessions: tests that run Ray Tune in-process get a Ray cluster of their own (see the
# `tune` marker in pyproject.toml).
test: install chromium
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m "not tune"
	$(PY) -m pytest -q -m tune

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The main job on the embedded default: synthetic faces -> shards -> a local Ray cluster ->
# 2 CPU workers training DCGAN in DDP for a few minutes. DEMO_ARGS adds `--set` overrides.
DEMO_ARGS ?=
demo: install
	$(VENV)/bin/facegan shards build shards/synthetic_demo.yaml --out $(OUT)/shards
	$(VENV)/bin/facegan shards verify $(OUT)/shards
	$(VENV)/bin/facegan shards inspect $(OUT)/shards --preview $(OUT)/shards_preview.png
	$(VENV)/bin/facegan train configs/dcgan_demo.yaml --set data.shards=$(abspath $(OUT))/shards \
		--set train.out_dir=$(abspath $(OUT))/run $(DEMO_ARGS)

# A local Ray head (job server on 127.0.0.1:8265, token auth) for `ray job submit`.
ray-up: install
	$(PY) -m facegan.launch.cluster up

ray-down:
	$(PY) -m facegan.launch.cluster down

bench: install
	$(PY) benchmarks/bench_build.py
	$(PY) benchmarks/bench_stream.py
	$(PY) benchmarks/bench_loop.py
	$(PY) benchmarks/bench_ddp.py

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^facegan' > requirements.lock.new
	{ head -2 requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp && rm requirements.lock.new && mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(OUT) .pytest_cache
