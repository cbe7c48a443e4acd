"""Writes docs/configuration.md, the configuration reference: every setting of `python -m nas.search` and
`python -m nas.train` (conf/config.yaml and its groups) and of `python -m nas.export` (conf/export.yaml), with
its type (the structured configs: nas/config.py, nas.export.ExportSettings), its default and its comment (the
YAML files, which hold every default once).

    python scripts/config_reference.py           # write docs/configuration.md
    python scripts/config_reference.py --check   # exit 1 (and show the difference) if it is not current

A key in a schema without a default in its YAML file, or a YAML key its schema does not know, stops the
generator with a one-line error: the reference and the config cannot disagree.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONF = ROOT / "conf"
SPACES = ROOT / "search_spaces"
OUT = ROOT / "docs" / "configuration.md"

# The nodes of conf/config.yaml, in the order a run meets them; groups name their options' folder.
NODES = ("model", "data", "base", "importance", "prune", "train", "search", "supernet", "latency", "final", "exits")
GROUPS = {"model": "minilm", "data": "rotten_tomatoes", "train": "default", "search": "default"}


# ---------------------------------------------------------------------------- reading YAML with its comments


@dataclass
class Item:
    """One key of a YAML file: its dotted path, its value as written, its comment (inline, continued and
    the comment lines just above it, joined)."""

    path: str
    raw: str
    comment: str
    mapping: bool  # a key whose value is the block below it


KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str | None, int]:
    """'value   # comment' -> ('value', 'comment', column of '#' within rest); no comment: (value, None, -1)."""
    match = re.search(r"(^|\s)#", rest)
    if not match:
        return rest.strip(), None, -1
    col = match.start() + (1 if match.group(1) else 0)
    return rest[:col].strip(), rest[col + 1:].strip(), col


def read_yaml(path: Path) -> tuple[str, list[Item], str]:
    """(the file's opening comment, its keys in order, its free-standing comments: those a blank line parts
    from the next key). Skips Hydra's `defaults` list and the comments inside it."""
    head: list[str] = []
    notes: list[str] = []
    items: list[Item] = []
    pending: list[str] = []  # comment lines waiting for the next key
    stack: list[tuple[int, str]] = []
    last: Item | None = None  # the key whose inline comment a following comment line may continue
    last_col = -1
    seen_key = False
    in_defaults = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            (notes if seen_key else head).extend(pending)
            pending, last = [], None
            continue
        if in_defaults and (indent > 0 or stripped.startswith("-")):
            continue
        in_defaults = False
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if text.startswith("@package"):
                continue
            if last is not None and indent == last_col:
                last.comment = f"{last.comment} {text}".strip()
                continue
            last = None
            pending.append(text)
            continue
        match = KEY.match(line)
        if not match:
            raise SystemExit(f"error: {path.relative_to(ROOT)}: cannot read the line {line!r}")
        key = match["key"]
        if not seen_key:
            head += pending
            pending = []
        seen_key = True
        if key == "defaults" and indent == 0:
            in_defaults, pending = True, []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, inline, col = _split_comment(match["rest"])
        dotted = ".".join([k for _, k in stack] + [key])
        item = Item(dotted, value, " ".join(pending + ([inline] if inline else [])), mapping=value == "")
        items.append(item)
        pending = []
        stack.append((indent, key))
        last, last_col = (item, len(line) - len(match["rest"]) + col) if inline is not None else (None, -1)
    return " ".join(head), items, " ".join(notes + pending)


# ---------------------------------------------------------------------------- types from the schemas


def type_name(kind: Any) -> str:
    """int, float or null, list of str, one of a | b ..."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if isinstance(kind, type) and issubclass(kind, Enum):
        return " | ".join(str(m.value) for m in kind)
    if kind is Any:
        return "any"
    return getattr(kind, "__name__", str(kind))


def schema_types(schema: type) -> dict[str, str]:
    hints = typing.get_type_hints(schema)
    return {f.name: type_name(hints[f.name]) for f in fields(schema)}


def value_type(raw: str) -> str:
    """A type for a key no schema types (top-level keys, data options), read from its YAML value."""
    if raw in ("null", "~", "???"):
        return "any"
    if raw in ("true", "false"):
        return "bool"
    if raw.startswith("["):
        return "list"
    if re.fullmatch(r"-?\d+", raw):
        return "int"
    if re.fullmatch(r"-?[\d.]+(e[-+]?\d+)?", raw, flags=re.I):
        return "float"
    return "str"


# ---------------------------------------------------------------------------- rendering


def cell(text: str) -> str:
    return text.replace("|", "\\|").strip()


def default_cell(raw: str) -> str:
    if raw == "???":
        return "required"
    return f"`{raw}`" if raw else ""


def table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def check_keys(where: str, schema_keys: Iterable[str], yaml_keys: Iterable[str]) -> None:
    """The schema and the YAML file name the same keys, or the generator stops."""
    missing = [k for k in schema_keys if k not in set(yaml_keys)]
    unknown = [k for k in yaml_keys if k not in set(schema_keys)]
    if missing:
        raise SystemExit(f"error: {where}: the schema has {', '.join(missing)} but the YAML file gives no default")
    if unknown:
        raise SystemExit(f"error: {where}: {', '.join(unknown)} in the YAML file but not in the schema")


def node_rows(node: str, items: list[Item], types: dict[str, str] | None) -> list[tuple[str, ...]]:
    rows = []
    for item in items:
        key = item.path.partition(".")[2] if item.path.startswith(node + ".") else item.path
        top = key.partition(".")[0]
        kind = types.get(top, value_type(item.raw)) if types is not None else value_type(item.raw)
        if item.mapping:
            kind = "mapping"
        rows.append((f"`{node}.{key}`", kind, default_cell(item.raw), item.comment))
    return rows


def render() -> str:
    from nas.config import SCHEMAS

    head, items, _ = read_yaml(CONF / "config.yaml")
    by_node: dict[str, list[Item]] = {}
    for item in items:
        by_node.setdefault(item.path.partition(".")[0], []).append(item)

    out = [
        "# Configuration reference",
        "",
        "Every setting of `python -m nas.search`, `python -m nas.train` and `python -m nas.export`: its type, "
        "default and meaning.",
        "",
        "<!-- generated by scripts/config_reference.py from nas/config.py, nas/export.py and conf/: do not edit -->",
        "",
        "Set any key on the command line in Hydra's grammar (`search.n_trials=40`, `+space=triple`, "
        "`model=hf model.name_or_path=PATH`), after `make search ARGS=...` or `python -m nas.search`. "
        "`python -m nas.search` and `python -m nas.train` read `conf/config.yaml` and its groups; `nas.train` also "
        "takes `+arch=PATH/config.yaml` (written by `nas.export`). Types come from the structured configs in "
        "`nas/config.py`: a wrong key or type is refused in one line before any work. Defaults and comments come from "
        "the YAML files under `conf/`.",
        "",
        f"`conf/config.yaml`: {head}",
        "",
        "## Top level",
        "",
        *table([(f"`{i.path}`", value_type(i.raw), default_cell(i.raw), i.comment)
                for node, its in by_node.items() if node not in NODES and node != "hydra"
                for i in its], ("key", "type", "default", "meaning")),
    ]

    for node in NODES:
        schema = SCHEMAS.get(node)
        types = schema_types(schema) if schema is not None else None
        out += [f"## {node}", ""]
        if node in GROUPS:
            folder = CONF / node
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            default = GROUPS[node]
            if len(options) > 1:
                out += [f"A group: `{node}=NAME` picks `conf/{node}/NAME.yaml`; options "
                        + ", ".join(f"`{o}`" + (" (default)" if o == default else "") for o in options) + ".", ""]
            for option in [default] + [o for o in options if o != default]:
                path = folder / f"{option}.yaml"
                intro, opt_items, _ = read_yaml(path)
                if schema is not None:
                    check_keys(f"conf/{node}/{option}.yaml", types, [i.path for i in opt_items if "." not in i.path])
                if len(options) > 1:
                    out += [f"### `{node}={option}`", ""]
                out += ([f"`conf/{node}/{option}.yaml`: {intro}", ""] if intro else [])
                out += table(node_rows(node, opt_items, types), ("key", "type", "default", "meaning"))
            if schema is None:
                out += [f"The `{node}` group has no structured config: each option's keys are its own.", ""]
            continue
        node_items = by_node.get(node, [])
        section = node_items[0] if node_items and node_items[0].mapping else None
        inner = [Item(i.path, i.raw, i.comment, i.mapping) for i in node_items if i is not section]
        if types is not None:
            check_keys(f"conf/config.yaml: {node}", types, [i.path.partition(".")[2] for i in inner
                                                            if i.path.count(".") == 1])
        if section is not None and section.comment:
            out += [section.comment, ""]
        out += table(node_rows(node, inner, types), ("key", "type", "default", "meaning"))

    hydra_items = [i for i in by_node.get("hydra", []) if not i.mapping]
    out += ["## hydra", "", "Hydra's own settings that `conf/config.yaml` sets.", ""]
    out += table([(f"`{i.path}`", value_type(i.raw), default_cell(i.raw), i.comment) for i in hydra_items],
                 ("key", "type", "default", "meaning"))

    out += budgets() + spaces() + export()
    return "\n".join(out).rstrip() + "\n"


def budgets() -> list[str]:
    out = ["## Budgets of a model", "",
           "`conf/budget/MODEL.yaml` is applied after the defaults when `model=MODEL` (the command line still wins).",
           ""]
    for path in sorted((CONF / "budget").glob("*.yaml")):
        intro, items, _ = read_yaml(path)
        out += [f"### `model={path.stem}`", "", f"`conf/budget/{path.name}`: {intro}", ""]
        out += table([(f"`{i.path}`", default_cell(i.raw), i.comment) for i in items if not i.mapping],
                     ("key", "value", "meaning"))
    return out


def spaces() -> list[str]:
    out = ["## space", "",
           "Not in the defaults: `+space=NAME` adds `search_spaces/NAME.yaml` (`conf/space` links there); "
           "`+space.KEY=VALUE` changes one of its keys. How to write one: [search spaces](search-spaces.md).", ""]
    rows = []
    for path in sorted(SPACES.glob("*.yaml")):
        intro, items, _ = read_yaml(path)
        axes = [i.path.partition(".")[2] for i in items if i.path.startswith("axes.") and i.path.count(".") == 1]
        first = intro.split(". ")[0].rstrip(".") + "." if intro else ""
        rows.append((f"`+space={path.stem}`", ", ".join(axes), first))
    return out + table(rows, ("space", "axes", "what"))


def export() -> list[str]:
    from nas.export import ExportSettings, LatencyOverrides  # registers the export schema

    head, items, tail = read_yaml(CONF / "export.yaml")
    items = [i for i in items if not i.path.startswith("hydra")]
    types = schema_types(ExportSettings)
    comments = source_comments(ExportSettings)
    by_key = {i.path: i for i in items}
    unknown = [k for k in by_key if k not in types]
    if unknown:
        raise SystemExit(f"error: conf/export.yaml: {', '.join(unknown)} not in nas.export.ExportSettings")
    rows = []
    for f in fields(ExportSettings):
        if f.name == "latency":
            continue
        item = by_key.get(f.name)
        raw = item.raw if item else yaml_literal(f.default)
        rows.append((f"`{f.name}`", types[f.name], default_cell(raw), (item.comment if item and item.comment
                                                                     else comments.get(f.name, ""))))
    latency_keys = ", ".join(f.name for f in fields(LatencyOverrides))
    rows.append(("`latency.KEY`", "as in latency", "the run's own", f"{tail} Keys: {latency_keys}.".strip()))
    return ["## nas.export", "", f"`conf/export.yaml`: {head}", "",
            *table(rows, ("key", "type", "default", "meaning"))]


def yaml_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def source_comments(cls: type) -> dict[str, str]:
    """A dataclass field's comment in the source (the lines above it and after it), lint markers dropped."""
    import inspect

    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"\s+(\w+): [^#]*(#\s*(noqa: \w+)?\s*(?P<text>.*))?$", line)
        if match:
            text = " ".join(pending + ([match["text"]] if match["text"] else []))
            comments[match.group(1)] = text.strip()
        pending = []
    return comments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.is_file() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                       "docs/configuration.md", "rendered"))
            print("docs/configuration.md is not current: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
