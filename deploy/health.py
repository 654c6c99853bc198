"""python -m deploy.health --heartbeat FILE [--max-age 30]   Container health check.

Exit 0 when `deploy run --heartbeat FILE` rewrote the file within --max-age seconds, else 1 with the reason.
Standard library only: Docker runs it every 30 s under a 5 s timeout, and importing OpenCV and ONNX Runtime
for each probe can take longer than that on an Orin Nano, which would mark a working unit unhealthy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from deploy.options import number  # standard library only, as this module


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.health", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat", required=True)
    p.add_argument("--max-age", type=number(float, 0, strict=True), default=30.0, help="seconds")


def health(args: argparse.Namespace) -> int:
    path = Path(args.heartbeat)
    try:
        beat = json.loads(path.read_text())
        age = time.time() - float(beat["time"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"unhealthy: {path}: no readable heartbeat ({type(e).__name__}); is `deploy run --heartbeat` running?")
        return 1
    if age > args.max_age:
        print(f"unhealthy: {path}: last heartbeat {age:.0f} s ago (> {args.max_age:.0f} s), "
              f"{beat.get('frames')} frames")
        return 1
    print(f"healthy: heartbeat {age:.1f} s ago, {beat.get('frames')} frames")
    return 0


def main(argv: list[str] | None = None) -> int:
    return health(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
