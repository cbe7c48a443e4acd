"""A database password never lands in a file or in the output: not in the run folder (Hydra's
.hydra/config.yaml, overrides.yaml, hydra.yaml, its log, the reports), not in an export folder,
not in the study's attributes, not in what the commands print. The folders are grepped whole."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg import postgres_url_or_skip

from tiny import cli_args, cli_env

PASSWORD = "S3cretPa55word"
pytestmark = pytest.mark.usefixtures("one_thread")


def files_holding(folder: Path, secret: str = PASSWORD) -> list[str]:
    """Every file under `folder` (binary ones too) whose bytes contain the secret."""
    needle = secret.encode()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes())


# ---- unit level -------------------------------------------------------------------------------------


def test_mask_hides_passwords_in_urls_and_known_secrets():
    from nas.redact import has_password, is_masked, mask, mask_url, register, url_passwords

    url = f"postgresql+psycopg2://nas:{PASSWORD}@db:5432/nas?sslmode=require&password=Other%40123"
    assert mask_url(url) == "postgresql+psycopg2://nas:***@db:5432/nas?sslmode=require&password=***"
    assert url_passwords(url) == sorted({PASSWORD, "Other%40123", "Other@123"})
    assert has_password(url) and not has_password("sqlite:////tmp/study.db") and not has_password("journal:/x.log")
    assert is_masked(mask_url(url)) and not is_masked(url)
    register(url)
    # the decoded form too, e.g. in a driver's message; ordinary text and password-less URLs are untouched
    assert mask(f"auth failed for Other@123 on {url} (see sqlite:///x.db)") == \
        f"auth failed for *** on {mask_url(url)} (see sqlite:///x.db)"
    assert mask("nas.search: 3 trials") == "nas.search: 3 trials"


def test_command_line_password_is_hidden_before_hydra_reads_it():
    from nas.redact import hide_storage_password, restore_storage

    argv = ["nas.search", "+space=triple", f"search.storage='postgresql://nas:{PASSWORD}@db/nas'", "search.n_trials=3"]
    real = hide_storage_password(argv)
    assert real == f"postgresql://nas:{PASSWORD}@db/nas"
    assert argv == ["nas.search", "+space=triple", "search.storage='postgresql://nas:***@db/nas'", "search.n_trials=3"]
    cfg = {"search": {"storage": "postgresql://nas:***@db/nas"}}
    restore_storage(cfg, real)
    assert cfg["search"]["storage"] == real  # in memory only
    assert hide_storage_password(["x", "search.storage=sqlite:////tmp/s.db"]) is None


def test_scrub_rewrites_whole_files_atomically(tmp_path):
    from nas.redact import register, scrub_folder

    register(f"postgresql://u:{PASSWORD}@h/d")
    (tmp_path / "config.yaml").write_text(f"storage: postgresql://u:{PASSWORD}@h/d\nother: 1\n")
    (tmp_path / "clean.yaml").write_text("storage: null\n")
    os.chmod(tmp_path / "config.yaml", 0o640)
    assert scrub_folder(tmp_path) == [tmp_path / "config.yaml"]
    assert (tmp_path / "config.yaml").read_text() == "storage: postgresql://u:***@h/d\nother: 1\n"
    assert oct((tmp_path / "config.yaml").stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.yaml", "config.yaml"]  # no temporary left


def test_log_records_and_streams_are_masked(tmp_path):
    import io

    from nas.redact import MaskingFilter, _MaskingStream

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("nas.test_secrets")
    logger.addHandler(handler)
    try:
        logger.error("opening %s", f"postgresql://u:{PASSWORD}@h/d")
        try:
            raise RuntimeError(f"cannot reach postgresql://u:{PASSWORD}@h/d")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = _MaskingStream(io.StringIO())
    out.write(f"url postgresql://u:{PASSWORD}@h/d\n")
    assert PASSWORD not in stream.getvalue() and "postgresql://u:***@h/d" in stream.getvalue()
    assert PASSWORD not in out._stream.getvalue()


# ---- the command line: refused early, nothing leaks ----------------------------------------------------


def run_cli(tiny_env, folder: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = cli_args({**tiny_env, "cache": folder / "cache"}, folder / "run", *overrides)
    return subprocess.run(args, cwd=folder, env={**cli_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def test_password_on_the_command_line_stays_out_of_the_run_folder(tiny_env, tmp_path):
    """An unreachable database: refused in one line, and Hydra's own files hold *** only."""
    url = f"postgresql://nas:{PASSWORD}@127.0.0.1:1/nas"
    proc = run_cli(tiny_env, tmp_path, f"search.storage={url}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert PASSWORD not in out
    assert "warning: search.storage has a password on the command line" in proc.stderr
    assert "error: search.storage='postgresql://nas:***@127.0.0.1:1/nas': cannot connect" in proc.stdout
    run = tmp_path / "run"
    assert (run / ".hydra" / "overrides.yaml").is_file() and (run / ".hydra" / "hydra.yaml").is_file()
    assert files_holding(tmp_path) == []
    assert "search.storage=postgresql://nas:***@127.0.0.1:1/nas" in (run / ".hydra" / "overrides.yaml").read_text()
    assert "storage: postgresql://nas:***@127.0.0.1:1/nas" in (run / ".hydra" / "config.yaml").read_text()


def test_password_from_the_environment_is_never_written(tiny_env, tmp_path):
    """NAS_STORAGE_URL: Hydra saves the interpolation, no warning is printed, the error is masked."""
    url = f"postgresql://nas:{PASSWORD}@127.0.0.1:1/nas"
    proc = run_cli(tiny_env, tmp_path, env={"NAS_STORAGE_URL": url})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "warning" not in out and PASSWORD not in out
    assert "postgresql://nas:***@127.0.0.1:1/nas" in out
    assert "storage: ${oc.env:NAS_STORAGE_URL,null}" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert files_holding(tmp_path) == []


# ---- a whole search and export on PostgreSQL with a password ------------------------------------------


def test_search_and_export_with_a_password_leak_nothing(tiny_env, tmp_path):
    """The throwaway server trusts local connections, so any password is accepted: the run uses
    the database for real while the password rides along in the URL."""
    import optuna

    from nas.study.storage import dispose, make_storage

    with postgres_url_or_skip() as plain:
        url = plain.replace("postgres@", f"postgres:{PASSWORD}@")
        name = "secret_study"
        proc = run_cli(tiny_env, tmp_path, f"search.storage={url}", f"search.study_name={name}", "search.n_trials=2",
                       "search.sampler=random", "train.max_steps=4")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "inspect: optuna-dashboard \"$NAS_STORAGE_URL\"" in proc.stdout

        run = tmp_path / "run"
        export_env = {**cli_env(), "NAS_STORAGE_URL": url}
        exp = subprocess.run([sys.executable, "-m", "nas.export", f"run_dir={run}", f"out={tmp_path / 'export'}",
                              "onnx=false"], cwd=tmp_path, env=export_env, capture_output=True, text=True, timeout=300)
        assert exp.returncode == 0, (exp.stdout + exp.stderr)[-4000:]
        # without the variable, export says what is missing instead of trying a masked URL
        no_env = subprocess.run([sys.executable, "-m", "nas.export", f"run_dir={run}", f"out={tmp_path / 'export2'}",
                                 "onnx=false"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                                timeout=120)
        assert no_env.returncode == 2
        assert no_env.stdout.strip() == (
            f"error: this run's search.storage is saved with its password masked ({url.replace(PASSWORD, '***')}); "
            "set the environment variable NAS_STORAGE_URL to the full URL and run again")

        storage = make_storage(plain)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            attrs = [study.user_attrs, storage.get_study_system_attrs(study._study_id)]
            attrs += [a for t in study.trials for a in (t.user_attrs, t.system_attrs)]
            assert len([t for t in study.trials if t.state.name == "COMPLETE"]) >= 2
        finally:
            dispose(storage)

    assert PASSWORD not in repr(attrs)
    for text in (out, exp.stdout + exp.stderr, no_env.stdout + no_env.stderr):
        assert PASSWORD not in text
    assert files_holding(run) == [] and files_holding(tmp_path / "export") == []
    assert files_holding(tmp_path) == []
    assert (tmp_path / "export" / "config.yaml").is_file() and (tmp_path / "export" / "README.md").is_file()
    assert ":***@" in (tmp_path / "export" / "config.yaml").read_text()
    assert any(p.suffix == ".log" for p in run.iterdir())  # Hydra's log was checked too
