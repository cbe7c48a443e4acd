# The README's commands. Each installs what it needs first (idempotent, ~0 s when nothing changed), so each works
# on a fresh machine: the main job installs the classifier path only; the tests and the language-model job also
# build llama.cpp (llama-cpp-python from source, ~4 minutes once; pip caches the wheel).
PY := .venv/bin/python
ARGS ?=

.PHONY: setup setup-llama search decoder test bench-prune

setup:
	@bash scripts/setup.sh

setup-llama:
	@bash scripts/setup.sh --llama

search: setup
	$(PY) -m nas.search +space=triple $(ARGS)

decoder: setup-llama
	$(PY) -m nas.search +space=decoder model=smollm2 data=shakespeare $(ARGS)

test: setup-llama
	$(PY) -m pytest -q --durations=25 $(ARGS)

bench-prune: setup
	$(PY) experiments/prune_importance/run.py $(ARGS)
