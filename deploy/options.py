"""`python -m deploy`'s option checks: argparse types that refuse out-of-range numbers, and the output paths
of `run` checked before a model loads (a bad one is one line and exit 2, not a traceback mid-stream)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deploy.errors import EdgeVisionError


class OptionError(EdgeVisionError, ValueError):
    """An output path the run could not write (the message names the option and the fix)."""


def number(cast: type, low: float, strict: bool = False):
    """argparse type: a `cast` >= low (> low if strict); `--drift-window 0` is refused, not NaN in the output."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {cast.__name__}, got {text!r}") from None
        if not (v > low if strict else v >= low):  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return v
    return parse


def frame_size(text: str) -> tuple[int, int]:
    """argparse type: WxH, both positive."""
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise argparse.ArgumentTypeError(f"expected WxH such as 1280x720, got {text!r}")
    return int(w), int(h)


def check_paths(args: argparse.Namespace) -> None:
    """Every path `run` writes, checked before a model loads and without creating anything: a bad one is one
    line and exit 2, not a traceback at the first frame or the first heartbeat, and a run refused for any
    reason leaves no folder behind (make_paths creates them once every check has passed)."""
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise OptionError(f"--out {out}: is a directory; give a file name such as {out / 'preds.jsonl'}")
        _check_dir(out.parent, "--out", "the folder it goes in")
    for option, folder in (("--annotate", args.annotate), ("--capture", args.capture)):
        if folder:
            _check_dir(Path(folder), option, "a folder")
    if args.heartbeat:
        beat = Path(args.heartbeat)
        if beat.is_dir():
            raise OptionError(f"--heartbeat {beat}: is a directory; give a file name")
        if not beat.parent.is_dir() or not os.access(beat.parent, os.W_OK):
            raise OptionError(f"--heartbeat {beat}: folder {beat.parent} does not exist or is not writable; "
                              "create it (the health check reads the file from there)")


def make_paths(args: argparse.Namespace) -> None:
    """Create the output folders and prove --out writable (the one real test: root ignores permission bits)."""
    if args.out:
        out = Path(args.out)
        _make_dir(out.parent, "--out", "the folder it goes in")
        part = Path(str(out) + ".part")
        try:
            part.open("w").close()
            part.unlink()
        except OSError as e:
            raise OptionError(f"--out {out}: cannot write there ({e.strerror}); choose another path") from None
    for option, folder in (("--annotate", args.annotate), ("--capture", args.capture)):
        if folder:
            _make_dir(Path(folder), option, "a folder")


def _check_dir(folder: Path, option: str, what: str) -> None:
    """`folder` is a folder, or can become one: its nearest existing ancestor is a folder."""
    p = folder.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OptionError(f"{option}: {folder} cannot be {what} ({p} is a file); choose another path")


def _make_dir(folder: Path, option: str, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionError(f"{option}: {folder} cannot be {what} ({e.strerror}); choose another path") from None
