"""python -m experiments.results [--take FILE [--kind KIND] [--name NAME] [--note TEXT]] [--check]

docs/results.md is written by this module from the results files filed under docs/results/, and only from
them: a re-run of an experiment, filed with --take, refreshes its table, and a figure that no file holds
cannot appear.

  --take runs/compare-yolo/results.json      file what a command wrote as docs/results/<name>.json
                                             (kind read from the file; name: its run folder), then write
  --check                                    exit 1 when docs/results.md is not what the files give

A filed file is {"kind", "name", "source", "taken", "results"}: `results` is the command's file verbatim.
Kinds: the experiments' results.json (compare-yolo, compare-ssdlite, compare-lraspp, ablate-recipe,
ablate-shift), `make kernels`' kernels.json and `make bench`'s report.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from deploy.errors import EdgeVisionError
from experiments.tables import RENDER, TITLES

RESULTS = Path("docs/results")
DOC = Path("docs/results.md")
HEADER = ("<!-- Written by `make results` (python -m experiments.results) from docs/results/*.json; "
          "do not edit: file a new results file instead. -->")


class ResultsError(EdgeVisionError, ValueError):
    pass


def infer_kind(path: Path, data: dict) -> str:
    """What wrote `data`: the experiments name themselves in setup.experiment; evaluate's files by shape."""
    kind = (data.get("setup") or {}).get("experiment")
    if kind is None and "profiles" in data and "max_drop" in data:
        kind = "kernels"
    elif kind is None and {"machine", "split"} <= set(data) and ("detector" in data or "segmenter" in data):
        kind = "bench"
    if kind not in RENDER:
        raise ResultsError(f"{path}: not a results file this doc knows (kinds: {', '.join(RENDER)}); "
                           "give --kind when it is one")
    return kind


def default_name(path: Path, kind: str) -> str:
    """runs/compare-yolo/results.json -> compare-yolo; runs/demo/kernels/kernels.json -> kernels-demo;
    runs/crackforest/bench/report.json -> bench-crackforest."""
    if kind in ("kernels", "bench"):
        return f"{kind}-{path.resolve().parent.parent.name}"
    return path.resolve().parent.name


def take(path: Path, kind: str | None, name: str | None, note: str | None = None, root: Path = RESULTS) -> Path:
    """File the command's output `path` as root/<name>.json (written whole or not at all) -> that path."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: cannot read it as JSON ({e}); give the results.json a command wrote") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a results file (a JSON object is expected)")
    kind = kind or infer_kind(path, data)
    if kind not in RENDER:
        raise ResultsError(f"--kind {kind}: unknown; choose from {', '.join(RENDER)}")
    name = name or default_name(path, kind)
    filed = {"kind": kind, "name": name, "source": str(path), "taken": datetime.date.today().isoformat(),
             **({"note": note} if note else {}), "results": data}
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"{name}.json"
    part = dest.with_name(dest.name + ".part")
    part.write_text(json.dumps(filed, indent=2) + "\n")
    part.replace(dest)
    return dest


def load_filed(root: Path = RESULTS) -> list[dict]:
    """Every filed results file, in the doc's order: by kind (TITLES' order), then by name."""
    filed = []
    for p in sorted(root.glob("*.json")):
        try:
            f = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ResultsError(f"{p}: not valid JSON ({e}); file it again with --take") from None
        if not isinstance(f, dict) or f.get("kind") not in RENDER or "results" not in f:
            raise ResultsError(f"{p}: not a filed results file (kind, name, source, taken, results); "
                               "file it with --take")
        filed.append(f)
    order = list(TITLES)
    return sorted(filed, key=lambda f: (order.index(f["kind"]), f["name"]))


def render(root: Path = RESULTS) -> str:
    """The whole of docs/results.md from the filed files."""
    lines = [HEADER, "", "# Results", "",
             "Every table below is one filed results file (`docs/results/<name>.json`), with the machine and day it "
             "was measured on. To refresh one, re-run its command and file its output: `python -m "
             "experiments.results --take <file>` (then commit both). Figures from another machine are not "
             "comparable across tables: compare within a table, where the models ran side by side.", ""]
    for f in load_filed(root):
        lines += [f"## {TITLES[f['kind']]}: `{f['name']}`", ""]
        lines += RENDER[f["kind"]](f)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--take", type=Path, default=None, help="a command's results file to file under docs/results/")
    p.add_argument("--kind", default=None, help="what wrote it, when the file does not say")
    p.add_argument("--name", default=None, help="its name under docs/results/ (default: its run folder)")
    p.add_argument("--note", default=None, help="one sentence the table must carry (a caveat of the run)")
    p.add_argument("--check", action="store_true", help="exit 1 when docs/results.md differs from the files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.take:
            print(f"filed: {take(args.take, args.kind, args.name, args.note)}")
        text = render()
    except EdgeVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} differs from what docs/results/*.json give; run `make results` and commit it",
                  file=sys.stderr)
            return 1
        print(f"{DOC}: up to date")
        return 0
    part = DOC.with_name(DOC.name + ".part")
    part.write_text(text)
    part.replace(DOC)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
