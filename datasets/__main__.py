"""python -m datasets generate --config CONFIG   (experiment or dataset YAML)

Generates the synthetic set a dataset config describes (its `synthetic:` block); skipped when the set on
disk was made with the same settings. For real datasets it only checks that the files are there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from datasets.config import DatasetError, load_dataset_config
from datasets.synthetic import SHIFTS, generate


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate the synthetic dataset named by a config")
    g.add_argument("--config", required=True, help="experiment config (with `data:`) or dataset config")
    g.add_argument("--force", action="store_true", help="regenerate even when up to date")
    return p


def dataset_config_path(config: str | Path) -> Path:
    raw = yaml.safe_load(Path(config).read_text()) or {}
    return Path(raw["data"]) if isinstance(raw.get("data"), str) else Path(config)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_dataset_config(dataset_config_path(args.config))
        root = Path(cfg.root)
        if not cfg.synthetic:
            if not root.is_dir():
                raise DatasetError(f"{cfg.source}: root {root} does not exist")
            print(f"dataset {cfg.name}: real data at {root}, nothing to generate")
            return 0
        settings = {"seed": 0, "image_size": [240, 320], "shifts": list(SHIFTS), **cfg.synthetic}
        stamp = root / "generated.json"
        if not args.force and stamp.is_file() and json.loads(stamp.read_text()) == settings:
            print(f"dataset {cfg.name}: up to date at {root}")
            return 0
        print(f"dataset {cfg.name}: generating {settings['splits']} at {root} ...", flush=True)
        generate(root, settings["seed"], settings["splits"], tuple(settings["image_size"]), settings["shifts"])
        stamp.write_text(json.dumps(settings))
        return 0
    except (DatasetError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
