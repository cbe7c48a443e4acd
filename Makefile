# The two commands of the README. Each installs what it needs first (idempotent, ~0 s when
# nothing changed), so both work on a fresh machine.
PY := .venv/bin/python
ARGS ?=

.PHONY: setup search test bench-prune

setup:
	@bash scripts/setup.sh

search: setup
	$(PY) -m nas.search +space=triple $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench-prune: setup
	$(PY) experiments/prune_importance/run.py $(ARGS)
