"""runs/<name>/report.json and report.md: bench results plus, once the gate ran, its verdict."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS = {"detector": ("map", "map50"), "segmenter": ("miou", "thin_iou")}


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict) -> str:
    lines = ["# edge-vision report", ""]
    m = report.get("machine", {})
    if m:
        lines += [f"Machine: {m.get('cpu')} ({m.get('cores')} cores), onnxruntime {m.get('onnxruntime')}, "
                  f"torch {m.get('torch')}. Split: `{report.get('split')}`. `agreement`: INT8 scored against the "
                  "fp32 model's own predictions (mAP@.5 / mIoU), a label-free measure of quantization fidelity.",
                  ""]
    for kind, metrics in METRICS.items():
        if kind not in report:
            continue
        variants = {k: v for k, v in report[kind].items() if k != "note"}
        threads = sorted({t for v in variants.values() for t in v.get("latency_ms", {})}, key=lambda t: int(t[:-1]))
        head = ["variant", *metrics, *[f"p50 ms {t}" for t in threads], *[f"p90 ms {t}" for t in threads],
                "size MB", "speedup 1t", "agreement"]
        lines += [f"## {kind}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, v in variants.items():
            lat = v.get("latency_ms", {})
            row = [name, *[_fmt(v.get(k)) for k in metrics],
                   *[_fmt(lat.get(t, {}).get("p50"), 2) for t in threads],
                   *[_fmt(lat.get(t, {}).get("p90"), 2) for t in threads],
                   _fmt(v.get("size_mb"), 2), _fmt(v.get("speedup_1t"), 2), _fmt(v.get("agreement"))]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if "note" in report[kind]:
            lines += [f"Note: {report[kind]['note']['split']}.", ""]
    gate = report.get("gate")
    if gate:
        lines += [f"## gate: {gate['verdict'].upper()}", "",
                  "| model | metric | ref fp32 | ref int8 | deployed fp32 | deployed int8 | quantization | "
                  "preprocessing | interaction |", "|---|---|---|---|---|---|---|---|---|"]
        for kind, g in gate["models"].items():
            c, d = g["cells"], g["deltas"]
            lines.append(f"| {kind} | {g['metric']} | {_fmt(c['reference/fp32'])} | {_fmt(c['reference/int8'])} | "
                         f"{_fmt(c['deployed/fp32'])} | {_fmt(c['deployed/int8'])} | {_fmt(d['quantization'])} | "
                         f"{_fmt(d['preprocessing'])} | {_fmt(d['interaction'])} |")
        lines += ["", "| check | value | limit | result |", "|---|---|---|---|"]
        for ch in gate["checks"]:
            lines.append(f"| {ch['name']} | {_fmt(ch['value'])} | {_fmt(ch['limit'])} | "
                         f"{'pass' if ch['passed'] else 'FAIL'} |")
        lines.append("")
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(run: str | Path, update: dict) -> dict:
    """Merge `update` into run/report.json (bench and gate each own their keys) and re-render report.md."""
    run = Path(run)
    path = run / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(update)
    _write(path, json.dumps(report, indent=2))
    _write(run / "report.md", render_markdown(report))
    return report
