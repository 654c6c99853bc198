"""python -m datasets generate --config CONFIG   (experiment or dataset YAML)
python -m datasets check --config CONFIG      (datasets.check: a table per split and the problems found)

Generates the synthetic set a dataset config describes (its `synthetic:` block); skipped when the set on
disk was made with the same settings. For real datasets it only checks that the files are there.
"""

from __future__ import annotations

import argparse
import sys

from datasets.config import DatasetError
from datasets.synthetic import prepare_dataset


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate the synthetic dataset named by a config")
    g.add_argument("--config", required=True, help="experiment config (with `data:`) or dataset config")
    g.add_argument("--force", action="store_true", help="regenerate even when up to date")
    sub.add_parser("check", help="per-split table and the problems found (python -m datasets check --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from datasets.check import main as check_main

        return check_main(argv[1:])
    args = get_args_parser().parse_args(argv)
    try:
        prepare_dataset(args.config, args.force)
        return 0
    except (DatasetError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
