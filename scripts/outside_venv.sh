#!/usr/bin/env bash
# Runs tests with the project installed (not editable) into a venv OUTSIDE the repository, from a
# copy of the sources that has no .venv: a test that assumes <repo>/.venv fails here.
#   scripts/outside_venv.sh                      # tests/test_dashboard.py (what CI runs)
#   scripts/outside_venv.sh -x                   # the whole suite
# Cheap and offline: the new venv reuses the packages already installed in .venv through a .pth
# file (nothing is downloaded), gets its own console scripts (optuna-dashboard, ...) written next to
# its python as pip would, and PATH does not include .venv/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
base_py=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/nas-outside.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"
# --without-pip: the venv's own (older) pip and setuptools would shadow the reused ones; the
# project is installed by .venv's pip into it (pip --python), built with .venv's setuptools.
"$base_py" -m venv --without-pip "$work/venv"
py=$work/venv/bin/python
"$base_py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
  > "$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_nas_reuse_packages.pth"
"$base_py" -m pip --python "$py" install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --no-index "$work/src" 2>&1 | { grep -v "is ignored: it is neither" || true; }
# run from $work: in the repository root the editable install's nas_prune.egg-info is found first
(cd "$work" && "$py" - "$work/venv") <<'EOF'
import importlib.metadata as md, json, sys
dist = md.distribution("nas-prune")  # the first on sys.path: this venv's own site-packages
direct = json.loads(dist.read_text("direct_url.json") or "{}")
if not str(dist.locate_file("")).startswith(sys.argv[1]) or direct.get("dir_info", {}).get("editable"):
    sys.exit(f"nas-prune is not installed non-editable into {sys.argv[1]}: {dist.locate_file('')} {direct}")
EOF
# console scripts of the reused packages, next to this venv's python (pip writes the same wrapper)
"$py" - "$work/venv/bin" <<'EOF'
import importlib.metadata as md, os, sys
bin_dir = sys.argv[1]
for ep in md.entry_points(group="console_scripts"):
    path = os.path.join(bin_dir, ep.name)
    if os.path.exists(path):
        continue
    module, _, attr = ep.value.partition(":")
    with open(path, "w") as fh:
        fh.write(f"#!{sys.executable}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
                 f"sys.exit({attr}())\n")
    os.chmod(path, 0o755)
EOF
test -x "$work/venv/bin/optuna-dashboard"
test ! -e "$work/src/.venv"
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(tests/test_dashboard.py)
cd "$work/src"
PATH="$work/venv/bin:$(printf '%s' "$PATH" | tr ':' '\n' | grep -vx "$repo/.venv/bin" | paste -sd: -)" \
  "$py" -m pytest -q -p no:cacheprovider "${args[@]}"
