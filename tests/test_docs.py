"""README.md and docs/ stay true: every command's settings compose against the real config, every setting and
path they name exists, the results table and the configuration reference are what their generators write, and
the README stays a front page (at most 250 lines, its picture a front from a recorded run of the main command).

Cheap: nothing here trains, times or loads a model; Hydra composes configs and the generators read files."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
REPO_DIRS = ("nas", "conf", "experiments", "tests", "scripts", "search_spaces", "docs", ".ci")
COMMAND = re.compile(r"python -m (nas\.(?:search|export|train))\b|\bmake (search|decoder)\b")
PLACEHOLDERS = {"NAME", "MODEL", "PATH", "FILE", "DATE", "TIME", "KEY", "VALUE", "RUN", "RUN_DIR", "FOLDER", "CACHE",
                "N"}  # words the docs write for what the reader fills in
SHELL_VARS = {"HOSTNAME": "host", "$": "4242", "i": "1"}  # $PWD: the test's own folder


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package)."""
    if f"_docs_{name}" in sys.modules:
        return sys.modules[f"_docs_{name}"]
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- reading markdown


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the paragraph just above) of each fenced code block."""
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        above = text[:match.start()].rstrip("\n").split("\n\n")[-1]
        out.append((match.group(1), match.group(2), above))
    return out


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def inline_spans(text: str) -> list[str]:
    """Code spans of the prose; as in Markdown, a span may wrap onto the next line."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(text)) if "\n\n" not in span]


def shell_lines(text: str) -> list[tuple[str, bool]]:
    """(line, fenced) for each shell line of the page: fenced lines (continuations joined) and inline spans."""
    lines = []
    for _, body, _ in fenced_blocks(text):
        lines += [(line, True) for line in body.replace("\\\n", " ").splitlines()]
    return lines + [(span, False) for span in inline_spans(text)]


def makefile_overrides(target: str) -> list[str]:
    """The overrides a Makefile target passes to its command before $(ARGS)."""
    recipe = re.search(rf"^{target}:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert recipe, f"the Makefile has no target {target}"
    words = recipe.group(1).split()
    return [w for w in words[words.index("-m") + 2:] if w != "$(ARGS)"]


def commands(text: str, pwd: Path) -> list[tuple[str, list[str], str]]:
    """(module, overrides, the line) of each nas.search / nas.export / nas.train / make search|decoder command."""
    found = []
    for line, fenced in shell_lines(text):
        # optional arguments in a usage line ([pick=knee|...]) and elisions (...) are not settings
        line = re.sub(r"(?<=\s)\[[^\]]*\]|\.\.\.", "", line)
        match = COMMAND.search(line)
        if not match:
            continue
        expanded = re.sub(r"\$\{?(\w+|\$)\}?", lambda m: str(pwd) if m.group(1) == "PWD" else SHELL_VARS.get(
            m.group(1), "x"), line[match.start():])
        words = shlex.split(expanded, comments=True)
        if match.group(1):
            module, fixed, given = match.group(1), [], words[3:]
        else:
            module, fixed = "nas.search", makefile_overrides(match.group(2))
            given = " ".join(w.partition("=")[2] for w in words[2:] if w.startswith("ARGS=")).split()
        overrides = []
        for word in given:
            if word in ("&", "&&", ";", "|", "||") or word.startswith(("&", ";", "|", ">")):
                break
            overrides.append(word)
        if not fenced and not overrides:
            continue  # prose naming a command, not a command line to run
        overrides = fixed + overrides
        found.append((module, overrides, line.strip()))
    return found


# ---------------------------------------------------------------------------- commands compose


def spaces_written_by_the_docs(pwd: Path) -> None:
    """The search spaces the docs tell a user to write (a yaml block under a paragraph naming
    `FOLDER/space/NAME.yaml`), written under `pwd` as the docs say."""
    for page in PAGES:
        for lang, body, above in fenced_blocks(page.read_text()):
            named = re.findall(r"`([\w./-]+/space/\w+\.yaml)`", above)
            if lang == "yaml" and named:
                target = pwd / named[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(body)


def all_commands(tmp_path: Path) -> list[tuple[str, list[str], str, str]]:
    spaces_written_by_the_docs(tmp_path)
    return [(m, o, line, rel(page)) for page in PAGES for m, o, line in commands(page.read_text(), tmp_path)]


def test_the_docs_show_the_commands(tmp_path):
    found = all_commands(tmp_path)
    modules = {m for m, *_ in found}
    assert modules == {"nas.search", "nas.export", "nas.train"}, modules
    assert len(found) >= 20, [line for _, _, line, _ in found]
    readme = "\n".join(body for _, body, _ in fenced_blocks(README.read_text()))
    for target in ("search", "test"):  # the README's two commands, as CI runs them
        assert re.search(rf"^make {target}\s", readme, flags=re.M), f"README.md lost `make {target}`"
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), flags=re.M)


def test_every_command_composes_against_the_real_config(tmp_path, monkeypatch):
    """Each key=value a page passes to a command is composed by Hydra with the config the command reads (nas.export:
    also checked by its own argument checks), so a renamed key or a wrong type fails here."""
    from nas.config import compose
    from nas.export import parse_args

    monkeypatch.chdir(tmp_path)
    for module, overrides, line, page in all_commands(tmp_path):
        try:
            if module == "nas.export":
                parse_args(overrides)
            else:
                cfg = compose(overrides)
                if any(o.startswith("+space=") for o in overrides):
                    assert cfg.space.name, line
        except Exception as e:  # noqa: BLE001  (the message says which line of which page)
            pytest.fail(f"{page}: {line!r} does not compose: {type(e).__name__}: {e}")


def test_the_space_the_docs_write_resolves_as_its_comments_say(tmp_path):
    """The example space for BERT-base: the sizes in its comments are the sizes it resolves to."""
    from nas.config import compose
    from nas.spec import BaseShape
    from nas.study.space import SearchSpace

    spaces_written_by_the_docs(tmp_path)
    written = list(tmp_path.glob("*/space/*.yaml"))
    assert written, "no page writes a search space of its own"
    bert = BaseShape(num_layers=12, num_heads=12, head_size=64, hidden_size=768, ffn_size=3072, max_positions=512)
    claims = 0
    for path in written:
        cfg = compose([f"hydra.searchpath=[file://{path.parent.parent}]", f"+space={path.stem}"])
        space = SearchSpace.from_cfg(cfg.space).resolve(bert, max_length=128, lengths=list(range(8, 200)))
        for axis, low, high, step in re.findall(r"^\s+(\w+):.*#\s*(\d+)\.\.(\d+)(?: by (\d+))?", path.read_text(),
                                               flags=re.M):
            values = sorted(space.axes[axis].values)
            claims += 1
            assert (values[0], values[-1]) == (int(low), int(high)), (path.name, axis, values)
            if step:
                assert {b - a for a, b in pairwise(values)} == {int(step)}, (path.name, axis, values)
        for axis, sizes in re.findall(r"^\s+(\w+): \{choices: \[([\d, ]+)\]\}", path.read_text(), flags=re.M):
            claims += 1
            assert sorted(space.axes[axis].values) == sorted(int(s) for s in sizes.split(",")), (path.name, axis)
    assert claims >= 4, "the example space's comments no longer say which sizes it holds"


# ---------------------------------------------------------------------------- settings and paths exist


@cache
def config_keys() -> dict[str, set[str]]:
    """{node: dotted keys} of the composed config, of every data option, and of every shipped space."""
    from omegaconf import OmegaConf

    from nas.config import compose
    from nas.study.space import AXES

    def flat(tree, prefix=""):
        out = set()
        for key, value in tree.items():
            out.add(prefix + str(key))
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
        return out

    keys = flat(OmegaConf.to_container(compose([]), resolve=False))
    for data in (ROOT / "conf" / "data").glob("*.yaml"):
        keys |= flat(OmegaConf.to_container(compose([f"data={data.stem}"]).data), "data.")
    for space in (ROOT / "search_spaces").glob("*.yaml"):
        keys |= flat(OmegaConf.to_container(OmegaConf.load(space)), "space.")
    keys |= {f"space.axes.{axis}" for axis in AXES}  # every axis a space file may hold
    out: dict[str, set[str]] = {}
    for key in keys:
        out.setdefault(key.partition(".")[0], set()).add(key)
    return out


SETTING = re.compile(r"^[+~]?([a-z_]+)\.([a-z_][\w.]*)(=\S*)?$")
FILE_NAME = re.compile(r"\.(py|sh|onnx|safetensors|gguf|ya?ml|json|csv|md|log|db|png|html|txt)$")  # model.onnx


def test_every_setting_the_docs_name_exists():
    """`node.key` and `node.key=value` in prose name real keys (placeholders such as `latency.KEY` and
    wildcards such as `final.*` aside), so a renamed key cannot linger in the docs."""
    keys = config_keys()
    missing, seen = [], 0
    for page in PAGES:
        for span in inline_spans(page.read_text()):
            for word in span.split():
                match = SETTING.match(word)
                if not match or match.group(1) not in keys or match.group(1) == "hydra" or FILE_NAME.search(word):
                    continue
                key = f"{match.group(1)}.{match.group(2)}".rstrip(".")
                seen += 1
                if key not in keys[match.group(1)]:
                    missing.append(f"{rel(page)}: `{word}`")
    assert seen > 100
    assert not missing, "settings that do not exist:\n" + "\n".join(missing)


def named_paths(page: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) of each repository path a page names: markdown links (relative to the page), and
    backticked or code words that start with a folder of the repository. Placeholders (NAME, <model>, {node})
    are left out."""
    text = page.read_text()
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            out.append((target, (page.parent / target.split("#")[0]).resolve()))
    words = [w for span in inline_spans(text) for w in span.split()]
    words += [w for _, body, _ in fenced_blocks(text) for w in re.split(r"[\s\"'=]+", body)]
    for word in words:
        word = word.strip("`\"'(),;:[]").rstrip(".")
        if word.split("/")[0] not in REPO_DIRS or "/" not in word:
            continue
        if re.search(r"[<>{}$*]", word.replace("*", "", 1) if word.endswith(".*") else word) or any(
                part.split(".")[0] in PLACEHOLDERS for part in word.split("/")):
            continue
        out.append((word, ROOT / word))
    return out


def test_every_path_the_docs_name_exists():
    missing, seen = [], 0
    for page in PAGES:
        for written, path in named_paths(page):
            seen += 1
            if not (path.exists() or any(path.parent.glob(path.name))):
                missing.append(f"{rel(page)}: {written}")
    assert seen > 50
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_every_module_the_docs_name_exists():
    """`nas.x.y` names a module of the package, or a name defined in one."""
    missing = []
    for page in PAGES:
        for span in inline_spans(page.read_text()):
            if not re.fullmatch(r"nas(\.\w+)+", span):
                continue
            parts = span.split(".")
            for cut in range(len(parts), 0, -1):
                base = ROOT.joinpath(*parts[:cut])
                source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                if source.is_file():
                    rest = parts[cut:]
                    if rest and not re.search(rf"^\s*(def|class) {rest[0]}\b|^{rest[0]}\b", source.read_text(),
                                              flags=re.M):
                        missing.append(f"{rel(page)}: {span}")
                    break
            else:
                missing.append(f"{rel(page)}: {span}")
    assert not missing, "modules that do not exist:\n" + "\n".join(missing)


def test_the_files_the_readme_loads_are_the_ones_an_export_writes():
    """The file names in the README's Python (model.int8.onnx, model.<type>.gguf) are what nas.deploy.bundle writes."""
    bundle = (ROOT / "nas" / "deploy" / "bundle.py").read_text()
    gguf_types = (ROOT / "nas" / "deploy" / "gguf.py").read_text()
    code = "\n".join(body for lang, body, _ in fenced_blocks(README.read_text()) if lang == "python")
    names = set(re.findall(r"model\.[\w.]+\.(?:onnx|gguf)", code))
    assert {"model.int8.onnx"} <= names and any(n.endswith(".gguf") for n in names), names
    for name in names:
        if name.endswith(".gguf"):
            kind = name[len("model."):-len(".gguf")]
            assert 'f"model.{kind}.gguf"' in bundle and f'"{kind}"' in gguf_types, name
        else:
            assert f"'{name}'" in bundle or f'"{name}"' in bundle or f"/{name}" in bundle, name


# ---------------------------------------------------------------------------- generated parts are current


def in_git_checkout() -> bool:
    done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "true" and (ROOT / ".git").exists()


def test_the_results_are_what_the_script_renders_from_experiments():
    if not in_git_checkout():
        pytest.skip("a copy of the sources without git history: the rows' dates come from it")
    render = script("render_results")
    readme = README.read_text()
    table = readme.split(render.START)[1].split(render.END)[0].strip()
    assert table == render.render_table(), "README.md's results table is not current: python scripts/render_results.py"
    assert (ROOT / "docs" / "results.md").read_text() == render.render_page(), \
        "docs/results.md is not current: python scripts/render_results.py"
    for entry in render.REGISTRY:
        assert entry.file.startswith("experiments/") and (ROOT / entry.file).is_file(), entry.file
        row = next(line for line in table.splitlines() if f"]({entry.file})" in line and entry.what[:20] in line)
        date, command = [c.strip() for c in row.split(" | ")[-2:]]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and command.strip(" |"), row


def test_a_changed_results_file_shows_a_new_date(tmp_path, monkeypatch):
    """A results file with uncommitted changes is dated today; a committed one by its last commit; a date field wins."""
    if not in_git_checkout():
        pytest.skip("a copy of the sources without git history")
    import datetime

    render = script("render_results")
    entry = render.REGISTRY[0]
    committed = subprocess.run(["git", "log", "-1", "--format=%cs", "--", entry.file], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", entry.file], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    expected = datetime.date.today().isoformat() if dirty else committed
    assert render.file_date(entry, {}) == expected
    dated = render.Entry(**{**entry.__dict__, "date_field": "date"})
    assert render.file_date(dated, {"date": "2031-01-02"}) == "2031-01-02"
    untracked = render.Entry(**{**entry.__dict__, "file": "experiments/_no_such_results.json"})
    (ROOT / untracked.file).write_text("{}")
    try:
        assert render.file_date(untracked, {}) == datetime.date.today().isoformat()
    finally:
        (ROOT / untracked.file).unlink()


def test_the_configuration_reference_is_what_the_generator_writes():
    reference = script("config_reference")
    assert (ROOT / "docs" / "configuration.md").read_text() == reference.render(), \
        "docs/configuration.md is not current: python scripts/config_reference.py"


def test_the_configuration_reference_covers_every_schema_key():
    """Every key of every structured config, and of nas.export's, has a row with its type."""
    from dataclasses import fields

    from nas.config import SCHEMAS
    from nas.export import ExportSettings

    text = (ROOT / "docs" / "configuration.md").read_text()
    for node, schema in SCHEMAS.items():
        for f in fields(schema):
            assert re.search(rf"^\| `{node}\.{f.name}` \| \S", text, flags=re.M), f"{node}.{f.name}"
    for f in fields(ExportSettings):
        key = "latency.KEY" if f.name == "latency" else f.name
        assert re.search(rf"^\| `{re.escape(key)}` \| \S", text, flags=re.M), key


def test_the_generators_refuse_a_schema_key_without_a_default(tmp_path, monkeypatch):
    """A key the schema has and the YAML file lacks stops the reference, in one line naming both."""
    reference = script("config_reference")
    conf = tmp_path / "conf"
    conf.mkdir()
    for path in (ROOT / "conf").rglob("*.yaml"):
        target = conf / path.relative_to(ROOT / "conf")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text()
        if path.name == "config.yaml":
            text = text.replace("  patience: 0           # eval_every-step periods without a better validation before a member stops",
                                "  #")
        target.write_text(text)
    monkeypatch.setattr(reference, "CONF", conf)
    with pytest.raises(SystemExit, match=r"final.*patience.*no default"):
        reference.render()


# ---------------------------------------------------------------------------- a front page


def test_the_readme_is_a_front_page():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250; the rest belongs in docs/)"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 1 and images[0].startswith("experiments/") and images[0].endswith("pareto.png"), images
    caption = text.split(images[0] + ")", 1)[1].split("\n\n")[1]
    assert images[0] in caption and "python -m nas.search +space=triple" in caption.replace("\n", " "), caption
    assert re.search(r"\d{4}-\d{2}-\d{2}", caption), "the caption says when the pictured run was recorded"
    for page in DOCS:
        assert f"](docs/{page.name})" in text, f"the README does not link {rel(page)}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_each_page_says_its_purpose_in_one_line(page):
    head = page.read_text().split("\n\n")
    assert head[0].startswith("# ") and "\n" not in head[0], head[0]
    assert "\n" not in head[1] and not head[1].startswith(("#", "|", "-", "`")) and head[1].endswith("."), head[1]


def test_fractions_in_the_shipped_spaces_table_are_what_the_spaces_resolve_to():
    """docs/search-spaces.md's table of what the shipped spaces offer MiniLM and BERT-base is what they resolve to."""
    from nas.config import compose
    from nas.spec import BaseShape
    from nas.study.space import SearchSpace

    bases = {
        "MiniLM": BaseShape(num_layers=6, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536,
                            max_positions=512),
        "BERT-base": BaseShape(num_layers=12, num_heads=12, head_size=64, hidden_size=768, ffn_size=3072,
                               max_positions=512),
    }
    text = (ROOT / "docs" / "search-spaces.md").read_text()
    header = re.search(r"^\| space \| MiniLM .*\| BERT-base .*\|$", text, flags=re.M)
    assert header, "the table of shipped spaces is gone"
    rows = re.findall(r"^\| (\w+) \| (.+?) \| (.+?) \|$", text[header.end():].split("\n\n")[0], flags=re.M)
    assert len(rows) >= 5, rows
    names = {"layers": "layers", "heads": "heads", "FFN": "ffn", "hidden": "hidden", "context": "context"}
    for space_name, *columns in rows:
        space = SearchSpace.from_cfg(compose([f"+space={space_name}"]).space)
        for (model, shape), column in zip(bases.items(), columns, strict=True):
            resolved = space.resolve(shape, max_length=128)
            for part in column.split(", "):
                label, _, sizes = part.partition(" ")
                values = sorted(resolved.axes[names[label]].values)
                if ".." in sizes:
                    low, _, rest = sizes.partition("..")
                    high, _, step = rest.partition(" by ")
                    assert (values[0], values[-1]) == (int(low), int(high)), (space_name, model, part, values)
                    if step:
                        assert {b - a for a, b in pairwise(values)} == {int(step)}, (space_name, model, part)
                else:
                    assert values == [int(s) for s in sizes.split()], (space_name, model, part, values)
