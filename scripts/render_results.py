"""Renders the README's results table (between the results markers) and docs/results.md from the results
files under experiments/, so neither is written by hand.

    python scripts/render_results.py           # write README.md's table and docs/results.md
    python scripts/render_results.py --check   # exit 1 (and show the difference) if either is not current

REGISTRY holds one Entry per row: the results file it reads, what it measured, how its figure and its details
are read from the file, the baseline and method, and the command that wrote the file. A row's date is the
file's own `date` field when it has one (`Entry.date_field`), else the day of the file's last commit
(`git log -1 --format=%cs -- FILE`), or today while the file has changes not yet committed: a changed file
shows a new date, and the check fails until this script has been run again.

To add a row: write a function that reads the figure from the file's JSON (and, if you like, one for its
details), and append an Entry to REGISTRY; then run this script.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "results.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

Data = Mapping[str, Any]


@dataclass(frozen=True)
class Entry:
    """One row of the results table, read from one results file."""

    file: str  # the results file, relative to the repository root
    what: str  # what was measured, in a few words
    figure: Callable[[Data], str]  # the figure, read from the file's JSON
    baseline: Callable[[Data], str]  # what the figure is measured against, and how (inputs, batch, threads, runtime)
    command: str  # the command that wrote the file
    details: Callable[[Data], list[str]] | None = None  # markdown lines for docs/results.md
    date_field: str | None = None  # a field of the file holding its date (YYYY-MM-DD), when it has one
    note: str = ""  # what a reader must know beside the figure (docs/results.md)


# ---------------------------------------------------------------------------- reading the files


def _row(data: Data, **match: Any) -> Data:
    for row in data["rows"]:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    raise KeyError(f"no row with {match}")


def _deployed(row: Data, *, c: bool = True) -> str:
    lo, hi = row["diff_points_90ci"]
    speed = [f"{row['speedup_over_runtime_fp32_base']:.2f}x over (b)"]
    if c:
        speed.append(f"{row['speedup_over_quantized_base']:.2f}x over (c)")
    speed.append(f"{row['speedup_over_torch_fp32_base']:.2f}x over (a)")
    return (f"int8 test accuracy {row['test_accuracy_deployed']:.4f} ({row['diff_points']:+.2f} points, 90% CI "
            f"{lo:+.2f}..{hi:+.2f}); " + ", ".join(speed))


def winner_figure(data: Data) -> str:
    row = _row(data, shape=data["chosen_at_1pt"])
    return f"{row['shape']}: " + _deployed(row)


def quantized_base_figure(data: Data) -> str:
    return _deployed(_row(data, model="base_int8"), c=False)


def deployed_baseline(data: Data) -> str:
    return (f"the unpruned base, fp32 test accuracy {data['base_test_accuracy_fp32']:.4f} on {data['test_reviews']:,} "
            "reviews; timed beside it in (a) torch fp32, (b) onnxruntime fp32, (c) onnxruntime int8: "
            + _short(data["latency_definition"]))


def _short(definition: str) -> str:
    """'real inputs, sample 32, batch 1, 1 thread, onnxruntime dynamic int8 (...), 5 paired rounds' without the
    parenthesis (docs/results.md gives it whole)."""
    out, depth = [], 0
    for ch in definition:
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")"
    return " ".join("".join(out).split()).replace(" ,", ",")


def deployed_details(data: Data) -> list[str]:
    rows = [f"| {r['model']} | {r['shape']} | {r['test_accuracy_deployed']:.4f} ({r['test_accuracy_fp32']:.4f}) | "
            f"{r['diff_points']:+.2f} ({r['diff_points_90ci'][0]:+.2f}..{r['diff_points_90ci'][1]:+.2f}) | "
            f"{r['speedup_over_quantized_base']:.2f}x | {r['speedup_over_runtime_fp32_base']:.2f}x | "
            f"{r['speedup_over_torch_fp32_base']:.2f}x |" for r in data["rows"]]
    return [f"Timing: {data['latency_definition']}. Baselines: "
            + "; ".join(f"({k}) {v}" for k, v in data["baselines"].items()) + ".", "",
            "| model | shape | test accuracy int8 (fp32) | points vs the fp32 base, 90% CI | over (c) | over (b) | "
            "over (a) |", "|---|---|---|---|---|---|---|", *rows]


def _worst(data: Data, pts: int) -> str:
    v = data[f"speedup_at_{pts}pt_over_quantized_base"]
    return f"{v:.2f}x over (c)" if v is not None else "none (a seed has no member within it)"


def seeds_figure(data: Data) -> str:
    winners = [f"seed {s['seed']} {s['winner']['shape']}"
               + (" (it ships with early exits; here without them)" if s["winner"].get("ships_with_exits") else "")
               + f" {s['winner']['test_change_points']:+.2f} points at "
               f"{s['winner']['speedup_over_quantized_base']:.2f}x over (c)" for s in data["seeds"]]
    return (f"worst of {len(data['seeds'])} search seeds, fastest final member within 1.0 test point of the fp32 base: "
            f"{_worst(data, 1)}; within 3.0: {_worst(data, 3)}. Winners as served (int8): " + "; ".join(winners))


FEATURES = (("avx2", "AVX2"), ("avx512", "AVX-512"), ("vnni", "VNNI"), ("bf16", "bf16"), ("amx", "AMX"))


def machine_text(data: Data) -> str:
    """'; CPU: AMD EPYC, 2 cores, AVX2 yes, AVX-512 no, ...' from a results file's `machine` (nas.util.cpu_features,
    as the run recorded it), or nothing for a file written before runs recorded it."""
    m = data.get("machine")
    if not m:
        return ""
    said = {True: "yes", False: "no", None: "unknown"}
    features = ", ".join(f"{name} {said[m.get(key)]}" for key, name in FEATURES)
    precision = f"; training in {m['training_precision']}" if m.get("training_precision") else ""
    return f"; CPU: {m.get('cpu')}, {m.get('cores')} cores, {features}{precision}"


def seeds_baseline(data: Data) -> str:
    first = data["seeds"][0]
    return (f"the unpruned base, fp32 test accuracy {first['base_test_accuracy_fp32']:.4f}; timed beside it in (a) "
            "torch fp32, (b) onnxruntime fp32, (c) onnxruntime int8: " + _short(first["latency_definition"])
            + machine_text(data))


def seeds_details(data: Data) -> list[str]:
    rows = []
    for s in data["seeds"]:
        w = s["winner"]
        lo, hi = w["test_change_points_90ci"]
        wall = f"{s['wall_time_s'] / 60:.1f} min" if s.get("wall_time_s") else "n/a"
        rows.append(f"| {s['seed']} | {w['shape']} | {w['test_accuracy_int8_as_served']:.4f} | "
                    f"{w['test_change_points']:+.2f} ({lo:+.2f}..{hi:+.2f}) | {w['speedup_over_quantized_base']:.2f}x | "
                    f"{w['speedup_over_runtime_fp32_base']:.2f}x | {w['speedup_over_torch_fp32_base']:.2f}x | {wall} |")
    seeds = [s["seed"] for s in data["seeds"]]
    command = " ".join(data["command"].replace("search.seed=S", f"search.seed={seeds[0]}").split())
    return [f"Command: `{command}`, then search.seed={', '.join(map(str, seeds[1:]))}. Timing: "
            f"{data['seeds'][0]['latency_definition']}.", "",
            "| seed | winner | int8 test as served | points vs the fp32 base (90% CI) | over (c) | over (b) | over (a) "
            "| wall |", "|---|---|---|---|---|---|---|---|", *rows]


def table_figure(data: Data) -> str:
    return (f"{data['within_10pct']}/{data['shapes']} held-out shapes within 10% of their measured speedup; median "
            f"error {data['median_abs_error']:.1%}, max {data['max_abs_error']:.1%}; Kendall tau "
            f"{data['kendall_tau']:.2f}; {data['predict_seconds_median'] * 1000:.1f} ms a prediction, table built in "
            f"{data['table_seconds']:.0f} s")


def table_baseline(data: Data) -> str:
    return (f"speedups measured in {data['reference_rounds']} paired rounds with the base, "
            f"{data['runtime']} {data['precision']}: " + _short(data["latency_definition"]).split(", predicted")[0]
            + machine_text(data))


def table_details(data: Data) -> list[str]:
    grid = data["grid"]
    rows = [f"| {r['shape']} | {r['predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x "
            f"({r['measured_p10']:.2f}-{r['measured_p90']:.2f}) | {r['error']:+.1%} |" for r in data["rows"]]
    return [f"Timing: {data['latency_definition']}. Grid timed: hidden {grid['hidden']}, heads {grid['heads']}, "
            f"FFN {grid['ffn']} (other sizes interpolated).", "",
            "| shape | predicted | measured (p10-p90) | error |", "|---|---|---|---|", *rows]


def _lm_row(r: Data) -> str:
    return (f"test perplexity per byte {r['test_byte_perplexity']:.4f} ({100 * r['vs_base']:+.2f}%; per token of the "
            f"base's tokenizer {r['test_perplexity']:.2f}, {100 * r['vs_base_per_token']:+.1f}%), decode "
            f"{r['speedup']:.2f}x [{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}] over the base at q8_0, "
            f"{r['vocab']:,} token ids")


def lm_winner_figure(data: Data) -> str:
    r = data["winner"]
    what = (f"the base alone at {str(r['key']).removeprefix('base ')}" if isinstance(r["key"], str)
            else f"{r['shape']} at {r['precision']} (healed, untrained)")
    return f"{what}: " + _lm_row(r)


def _lm_best(rows: Data, key: str = "vs_base") -> Data:
    return max((r for r in rows.values() if r[key] <= 0.10), key=lambda r: r["speedup"])


def lm_alone_figure(data: Data) -> str:
    r = _lm_best(data["quantization_alone"])
    t = _lm_best(data["quantization_alone"], "vs_base_per_token")
    return (f"the fastest within 10% per byte, {r['precision']}: " + _lm_row(r)
            + f"; within 10% per token: {t['precision']} at {t['speedup']:.2f}x")


def lm_vocab_figure(data: Data) -> str:
    r = _lm_best(data["vocabulary"])
    return f"the fastest within 10% per byte, {r['precision']} with {r['vocab']:,} ids: " + _lm_row(r)


def lm_baseline(data: Data) -> str:
    ref = data["reference"]
    return (f"the fine-tuned SmolLM2 at q8_0 in llama.cpp, test perplexity per byte {ref['test_byte_perplexity']:.4f} "
            f"({ref['test_bits_per_byte']:.4f} bits per byte, {ref['test_perplexity']:.2f} per token), each file "
            "scored by llama.cpp with its own tokenizer on the same text; " + data["timing"] + machine_text(data))


def lm_details(data: Data) -> list[str]:
    rows = [f"| base, {r['precision']} | {_lm_row(r)} |" for r in data["quantization_alone"].values()]
    rows += [f"| base, {k} | {_lm_row(r)} |" for k, r in (data.get("vocabulary") or {}).items()]
    rows += [f"| base, {k} (mixed types) | {_lm_row(r)} |" for k, r in ((data.get("mixed") or {}).get("rows") or {}).items()]
    rows += [f"| searched trial {n}{' (winner)' if r.get('winner') else ''}, {r['shape']} at {r['precision']} | "
             f"{_lm_row(r)} |" for n, r in ((data.get("search") or {}).get("models") or {}).items()]
    return [f"Timing: {data['timing']}.", "", "| model | figure |", "|---|---|", *rows]


def seeds_entry(file: str, what: str, note: str = "") -> Entry:
    """A row of seeds.py's results (the main command over search seeds, each re-timed by deployed.py)."""
    return Entry(file=file, what=what, figure=seeds_figure, baseline=seeds_baseline,
                 command="`python experiments/headline/seeds.py` (the main command per seed, each re-timed by "
                         "deployed.py)",
                 details=seeds_details, date_field="date", note=note)


REGISTRY: list[Entry] = [
    seeds_entry(
        "experiments/headline/seeds_xeon_vnni_5ep/results.json",
        ("`make search` over search seeds 0, 1, 2 at today's defaults (one final member at 5 epochs), on an Intel "
         "Xeon with AVX-512 VNNI and no bf16: the final stage's winners, as served (onnxruntime int8)"),
        note=("Every seed's winner ships with early exits; the figures above are its member's without them. With its "
              "exits, as served (experiments/early_exit/seeds_xeon_vnni_5ep, re-measured at 9657a11: 200 test "
              "reviews drawn with the test set's mix of exits taken and lengths, batch 1, 1 thread, 5 rounds, the "
              "base, the member and its exits taking turns on every input): seed 0 -1.83 points at 3.95x over (c), "
              "seed 1 -1.54 at 3.40x, seed 2 -0.15 at 3.92x."),
    ),
    seeds_entry(
        "experiments/headline/results.json",
        ("`make search` over search seeds 0, 1, 2 with the earlier defaults (two final members at 2.5 epochs): "
         "the final stage's winners, as served (onnxruntime int8)"),
        note=("Accuracy is scored one review at a time (as served); the band and the winner read only the judge half "
              "of validation, which no selection saw. Members train their whole planned length and end with their "
              "last weights; on this CPU (fp32 training) the stage affords no halving, and seeds 1-2 had only 2 front "
              "members within the slack. These runs chose exit rules at exits.margin=1, and every winner was a static "
              "member; at the default since, 1.645, the same seeds ship members with early exits as winners (seed 0 "
              "-0.88 points at 3.17x over (c), seed 1 -0.51 at 2.18x, seed 2 -1.46 at 2.66x; "
              "experiments/early_exit/results.json)."),
    ),
    seeds_entry(
        "experiments/headline/results_bf16.json",
        ("`make search` over search seeds 0, 1, 2 on a CPU with AVX-512 VNNI and bf16 (bf16 training, best "
         "validation checkpoints, patience 3), before the final stage was planned from step cost"),
    ),
    Entry(
        file="experiments/final_stage/results_deployed.json",
        what=("one earlier `make search` run (fp32 training, rungs at 100 steps, no judge rows): the fastest final-stage "
              "member within 1 test point, as deployed (onnxruntime int8)"),
        figure=winner_figure,
        baseline=deployed_baseline,
        command="`make search`, re-timed by `python experiments/headline/deployed.py RUN_DIR --final-only`",
        details=deployed_details,
        note=("One run of the main command, before the judge rows, bf16 training and 200-step rungs. Which shapes the "
              "trials reach varies from run to run: a second cold run then (2026-11-29) ended 1.6 test points below "
              "the base at 5.11x over (b); the three seeds of the row above are today's spread."),
    ),
    Entry(
        file="experiments/final_stage/results_deployed.json",
        what="quantization alone: the unpruned base in onnxruntime int8",
        figure=quantized_base_figure,
        baseline=deployed_baseline,
        command="`make search`, re-timed by `python experiments/headline/deployed.py RUN_DIR --final-only`",
    ),
    Entry(
        file="experiments/decoder_lm/results_llamacpp.json",
        what="`make decoder` (SmolLM2 on the plays, llama.cpp): the final stage's winner",
        figure=lm_winner_figure,
        baseline=lm_baseline,
        command="`make decoder`, re-measured by `python experiments/decoder_lm/vocab_bench.py --run RUN_DIR`",
        details=lm_details,
        note=("Perplexity per byte: a cut vocabulary tokenizes the same text into more tokens, so files compare per "
              "byte; 10% per byte is about 40% per token on this text. See [language-models.md](language-models.md)."),
    ),
    Entry(
        file="experiments/decoder_lm/results_llamacpp.json",
        what="quantization alone: the fine-tuned SmolLM2 at llama.cpp's types",
        figure=lm_alone_figure,
        baseline=lm_baseline,
        command="`python experiments/decoder_lm/vocab_bench.py --run RUN_DIR`",
    ),
    Entry(
        file="experiments/decoder_lm/results_llamacpp.json",
        what="the vocabulary alone: the fine-tuned SmolLM2 cut to the ids the plays use, at each type",
        figure=lm_vocab_figure,
        baseline=lm_baseline,
        command="`python experiments/decoder_lm/vocab_bench.py --run RUN_DIR`",
    ),
    Entry(
        file="experiments/latency_table/results_int8.json",
        what="latency table: each trial's int8 latency predicted from per-layer timings",
        figure=table_figure,
        baseline=table_baseline,
        command="`python experiments/latency_table/run.py --precision int8`",
        details=table_details,
    ),
]


# ---------------------------------------------------------------------------- dates


def file_date(entry: Entry, data: Data) -> str:
    """The file's own date field; else its last commit's day; today while it has uncommitted changes."""
    if entry.date_field and data.get(entry.date_field):
        return str(data[entry.date_field])[:10]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()} (dates come from git history)")
        return done.stdout.strip()

    if git("status", "--porcelain", "--", entry.file):
        return datetime.date.today().isoformat()
    return git("log", "-1", "--format=%cs", "--", entry.file) or datetime.date.today().isoformat()


# ---------------------------------------------------------------------------- rendering


def load(entry: Entry) -> Data:
    return json.loads((ROOT / entry.file).read_text())


def cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def render_table() -> str:
    """The README's results table (the lines between the markers)."""
    lines = ["| what | figure | baseline and timing | date | command |", "|---|---|---|---|---|"]
    for entry in REGISTRY:
        data = load(entry)
        lines.append(f"| {cell(entry.what)} ([file]({entry.file})) | {cell(entry.figure(data))} | "
                     f"{cell(entry.baseline(data))} | {file_date(entry, data)} | {cell(entry.command)} |")
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """README.md with the lines between the markers replaced by the rendered table."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs one {START} line and one {END} line after it")
    before, rest = text.split(START)
    _, after = rest.split(END)
    return f"{before}{START}\n{render_table()}\n{END}{after}"


def experiment_index() -> list[str]:
    """Each experiments/ folder: its first markdown heading (README.md first) and a link to it."""
    rows = []
    folders = sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for folder in folders:
        pages = ([folder / "README.md"] if (folder / "README.md").is_file() else []) + sorted(folder.glob("*.md"))
        for page in pages:
            title = next((line[2:].strip() for line in page.read_text().splitlines() if line.startswith("# ")), "")
            if title:
                rel = page.relative_to(ROOT)
                rows.append(f"| [`{folder.relative_to(ROOT)}`](../{rel}) | {cell(title)} |")
                break
    return ["| folder | what it measures |", "|---|---|", *rows]


def render_page() -> str:
    """docs/results.md."""
    out = ["# Results", "",
           "The current results in detail: for each row of the README's table, its figure, baseline and timing, date, "
           "command and the file it is read from.", "",
           "<!-- generated by scripts/render_results.py from the files under experiments/: do not edit -->", "",
           "Measured on a 2-core CPU. Every speedup is per input, against the unpruned base timed beside it in "
           "alternating rounds in one process; (a), (b) and (c) name the base it is over. How: "
           "[latency](latency.md).", ""]
    for entry in REGISTRY:
        data = load(entry)
        out += [f"## {entry.what}", "",
                f"- figure: {entry.figure(data)}",
                f"- baseline and timing: {entry.baseline(data)}",
                f"- date: {file_date(entry, data)}"
                + (f" (the file's `{entry.date_field}`)" if entry.date_field and data.get(entry.date_field)
                   else " (the file's last commit)"),
                f"- command: {entry.command}",
                f"- file: [`{entry.file}`](../{entry.file})", ""]
        if entry.note:
            out += [entry.note, ""]
        if entry.details:
            out += [*entry.details(data), ""]
    out += ["## Experiments", "",
            "Each folder under `experiments/` holds a benchmark, its command, its recorded results and their history.",
            "", *experiment_index(), ""]
    return "\n".join(out).rstrip() + "\n"


def differences() -> dict[str, tuple[str, str]]:
    """{file: (on disk, rendered)} for each of README.md and docs/results.md that is not current."""
    out = {}
    for path, render in ((README, lambda: render_readme(README.read_text())), (PAGE, render_page)):
        current = path.read_text() if path.is_file() else ""
        rendered = render()
        if current != rendered:
            out[str(path.relative_to(ROOT))] = (current, rendered)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md or docs/results.md is not current")
    args = parser.parse_args(argv)
    if args.check:
        diffs = differences()
        for name, (current, rendered) in diffs.items():
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), rendered.splitlines(True),
                                                       name, "rendered"))
        if diffs:
            print(f"not current: {', '.join(diffs)}: run python scripts/render_results.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(render_readme(README.read_text()))
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render_page())
    print(f"wrote {README.relative_to(ROOT)} (results table) and {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
