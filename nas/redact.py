"""Keeping database passwords out of everything the project writes or prints.

The way to pass a storage URL with a password is the environment variable `NAS_STORAGE_URL`:
`search.storage` defaults to it, and Hydra saves that default as the interpolation
`${oc.env:NAS_STORAGE_URL,null}`, never the value. A password given on the command line
(`search.storage=postgresql://user:PASSWORD@host/db`) still works, but

- `hide_storage_password(argv)` replaces it by `***` in sys.argv before Hydra parses the command
  line, so Hydra's saved config.yaml, overrides.yaml and hydra.yaml never hold it, and
  `restore_storage(cfg, url)` puts the real URL back into the in-memory config only;
- `mask(text)` masks any URL password (and every password seen so far) in a line;
  `guard_output()` routes stdout, stderr and the log handlers through it;
- `scrub_folder(path)` rewrites (atomically) the files of a folder that still hold a password,
  e.g. one that came from the user's own config file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

ENV_VAR = "NAS_STORAGE_URL"
MASK = "***"
STORAGE_KEY = "search.storage"
# scheme://user:PASSWORD@ (the password ends at the first '@', as SQLAlchemy parses it)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^:/?#@\s'\"]*:)(?P<pw>[^@\s'\"]+)(?P<tail>@)")
# ?password=... or &password=... in a URL's query (libpq and most drivers accept it there)
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<pw>[^&#\s'\"]+)", re.IGNORECASE)
# A password this short would mask ordinary words if replaced wherever it appears; URL
# passwords of any length are still masked by the two patterns above.
_MIN_LITERAL = 4
_secrets: set[str] = set()


def url_passwords(url: str) -> list[str]:
    """The passwords in a URL (userinfo and query), as written and percent-decoded."""
    found = [m["pw"] for m in _USERINFO.finditer(url)] + [m["pw"] for m in _QUERY.finditer(url)]
    found = [pw for pw in found if pw != MASK]
    return sorted({*found, *(unquote(pw) for pw in found)})


def has_password(url: str | None) -> bool:
    return bool(url) and bool(url_passwords(str(url)))


def is_masked(url: str | None) -> bool:
    """A URL whose password was replaced by *** (as saved in a run folder)."""
    text = str(url or "")
    return any(m["pw"] == MASK for m in _USERINFO.finditer(text)) or any(m["pw"] == MASK for m in _QUERY.finditer(text))


def register(url: str | None) -> None:
    """Remember a URL's passwords: `mask` then hides them wherever they appear."""
    for pw in url_passwords(str(url or "")):
        if len(pw) >= _MIN_LITERAL:
            _secrets.add(pw)


def mask_url(url: str) -> str:
    return _QUERY.sub(rf"\g<head>{MASK}", _USERINFO.sub(rf"\g<head>{MASK}\g<tail>", url))


def mask(text: str) -> str:
    """`text` with every URL password and every registered password replaced by ***."""
    if not text:
        return text
    out = mask_url(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def mask_tree(obj: Any) -> Any:
    """A copy of a nested dict/list structure with every string masked."""
    if isinstance(obj, str):
        return mask(obj)
    if isinstance(obj, dict):
        return {mask_tree(k): mask_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(mask_tree(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------- the command line


def _unquote(value: str) -> tuple[str, str]:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1], value[0]
    return value, ""


def hide_storage_password(argv: list[str]) -> str | None:
    """Replace the password of a `search.storage=URL` argument by *** in place; return the real URL
    (None when no argument carries a password). Call before Hydra reads sys.argv."""
    real = None
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != STORAGE_KEY:
            continue
        url, quote = _unquote(value)
        if has_password(url):
            register(url)
            real = url
            argv[i] = f"{key}={quote}{mask_url(url)}{quote}"
    return real


def restore_storage(cfg: Any, real_url: str | None) -> None:
    """Put the real URL back into the composed config (memory only) where Hydra saw the masked one."""
    if not real_url:
        return
    search = cfg.get("search") if hasattr(cfg, "get") else None
    if search is not None and search.get("storage") == mask_url(real_url):
        search["storage"] = real_url


PASSWORD_WARNING = (
    "warning: search.storage has a password on the command line: it is masked (***) in the run folder and in "
    f"the output, but shell history and the process list still show it; put the URL in the environment variable "
    f"{ENV_VAR} instead and leave search.storage unset (docs/scaling.md)"
)


# ---------------------------------------------------------------------------- files and output


def scrub_file(path: Path) -> bool:
    """Rewrite one text file with its passwords masked (temporary file + rename: never half a file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    clean = mask(text)
    if clean == text:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(clean)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def scrub_folder(folder: str | Path, patterns: Iterable[str] = ("*.yaml", "*.log")) -> list[Path]:
    """Mask passwords in the text files of a folder (not recursive); returns the files rewritten."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file() and scrub_file(p)]


class _MaskingStream:
    """A text stream that masks passwords in what is written to it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask(text))
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


class MaskingFilter(logging.Filter):
    """Masks passwords in a log record's message and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = mask(record.getMessage())
            record.args = None
        except Exception:  # a broken record is the logging module's to report
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return True


def guard_output() -> None:
    """Route stdout, stderr and every handler of the root logger through `mask` (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _MaskingStream):
            setattr(sys, name, _MaskingStream(stream))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


def protect_run(cfg: Any, run_dir: str | Path, real_url: str | None) -> None:
    """At the start of a Hydra job: the real storage URL back into memory, output masked, and the
    files Hydra saved under .hydra (and its log) cleaned of any password that reached them."""
    restore_storage(cfg, real_url)
    try:
        register(cfg["search"]["storage"])
    except (KeyError, TypeError, AttributeError, ValueError):
        pass
    guard_output()
    run_dir = Path(run_dir)
    scrub_folder(run_dir / ".hydra")
    scrub_folder(run_dir, patterns=("*.log",))
