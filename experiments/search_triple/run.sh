#!/usr/bin/env bash
# The README's main command from a cold cache, timed; its reports are copied here.
#   bash experiments/search_triple/run.sh [extra hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/search_triple
cache=$(mktemp -d)
run=${RUN_DIR:-$(mktemp -d)/run}   # RUN_DIR=... keeps the run folder (for nas.export)
start=$(date +%s)
NAS_CACHE_DIR=$cache PYTHONUNBUFFERED=1 .venv/bin/python -m nas.search +space=triple hydra.run.dir=$run "$@" 2>&1 \
  | grep --line-buffered -a -v -i "warn" | tee $here/search.log
end=$(date +%s)
echo "wall time from a cold cache: $((end - start)) s" | tee -a $here/search.log
cp $run/trials.csv $run/pareto.csv $run/pareto.png $run/best.yaml $here/
rm -rf "$cache"
[ -n "${RUN_DIR:-}" ] || rm -rf "$(dirname "$run")"
