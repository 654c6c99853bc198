"""runs/<name>/bench/report.json and report.md: bench results, plots and, once the gate ran, its verdict."""

from __future__ import annotations

import json
from pathlib import Path

from datasets.metrics import METRICS
from deploy.atomic import write_atomic
from train.run_dir import RunDir


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict) -> str:
    lines = ["# edge-vision report", ""]
    m = report.get("machine", {})
    if m:
        lines += [f"Machine: {m.get('model')} ({m.get('vendor')}, {m.get('cores')} cores), INT8 kernels "
                  f"{m.get('kernel_class')}, onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}. "
                  f"Split: `{report.get('split')}`. `agreement`: INT8 scored against the "
                  "fp32 model's own predictions (mAP@.5 / mIoU), a label-free measure of quantization fidelity.",
                  ""]
    for task, metrics in METRICS.items():
        if task not in report:
            continue
        variants = {k: v for k, v in report[task].items() if isinstance(v, dict) and "latency_ms" in v}
        threads = sorted({t for v in variants.values() for t in v.get("latency_ms", {})}, key=lambda t: int(t[:-1]))
        head = ["variant", *metrics, *[f"p50 ms {t}" for t in threads], *[f"p99 ms {t}" for t in threads],
                f"fps {threads[-1]}", "peak MB", "size MB", "size vs fp32", *[f"speed-up {t}" for t in threads],
                "agreement"]
        lines += [f"## {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, v in variants.items():
            lat = v.get("latency_ms", {})
            row = [name, *[_fmt(v.get(k)) for k in metrics],
                   *[_fmt(lat.get(t, {}).get("p50"), 2) for t in threads],
                   *[_fmt(lat.get(t, {}).get("p99"), 2) for t in threads],
                   _fmt(lat.get(threads[-1], {}).get("fps"), 0), _fmt(v.get("peak_memory_mb"), 1),
                   _fmt(v.get("size_mb"), 2), _fmt(v.get("size_ratio"), 2),
                   *[_fmt(v.get(f"speedup_{t}"), 2) for t in threads], _fmt(v.get("agreement"))]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        for name, v in report[task].items():
            if isinstance(v, dict) and "skipped" in v:
                lines += [f"{name}: not measured ({v['skipped']}).", ""]
        if "note" in report[task]:
            lines += [f"Note: {report[task]['note']['split']}.", ""]
    for plot in report.get("plots", []):
        lines += [f"![{plot}]({plot})", ""]
    gate = report.get("gate")
    if gate:
        mode = "labels" if gate.get("labels", True) else "no labels: agreement with fp32 on reference inputs"
        lines += [f"## gate: {gate['verdict'].upper()}", "",
                  f"Scored with {mode}; deployed preprocessing: `{gate.get('deployed_preprocess')}`.", "",
                  "| model | metric | ref fp32 | ref int8 | deployed fp32 | deployed int8 | quantization | "
                  "preprocessing | interaction | runtime | blame |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for task, g in gate["models"].items():
            c, d = g["cells"], g["deltas"]
            lines.append(f"| {task} | {g['metric']} | {_fmt(c['reference/fp32'])} | {_fmt(c['reference/int8'])} | "
                         f"{_fmt(c['deployed/fp32'])} | {_fmt(c['deployed/int8'])} | {_fmt(d['quantization'])} | "
                         f"{_fmt(d['preprocessing'])} | {_fmt(d['interaction'])} | {_fmt(d.get('runtime'))} | "
                         f"{g.get('blame', '-')} |")
        lines.append("")
        for task, g in gate["models"].items():
            ev = g.get("evidence")
            if not ev:
                continue
            it = ev["input_tensor"]
            lines.append(f"- {task}: input tensors reference vs deployed: max |diff| {it['max_abs']}, min PSNR "
                         f"{_fmt(it['min_psnr'], 1)} dB (`{Path(it['worst_image']).name}`); INT8 output SQNR "
                         + ", ".join(f"{k} {_fmt(v, 1)} dB" for k, v in ev["output_sqnr_db"].items())
                         + "; lowest-SQNR activations: "
                         + ", ".join(f"`{r['tensor']}` {_fmt(r['qdq_sqnr'], 1)} dB" for r in ev["worst_layers"][:3])
                         + f"; worst images in `gate/worst/{task}/`")
            qs = ev.get("quantization_split")
            if qs:
                lines.append(f"  - quantization = weights {_fmt(qs['weights'], 4)} + activations "
                             f"{_fmt(qs['activations'], 4)} + interaction {_fmt(qs['interaction'], 4)}; "
                             f"{qs['guilty']}: {qs['suggestion']}")
            rt = ev.get("runtime")
            if rt:
                lines.append(f"  - runtime `{rt['runtime']}` on `{rt['model']}`: output SQNR against ONNX Runtime "
                             + ", ".join(f"{k} {_fmt(v, 1)} dB" for k, v in rt["output_sqnr_db"].items()))
        lines += ["", "| check | value | limit | result |", "|---|---|---|---|"]
        for ch in gate["checks"]:
            state = "skipped" if ch.get("skipped") else ("pass" if ch["passed"] else "FAIL")
            lines.append(f"| {ch['name']} | {_fmt(ch['value'])} | {_fmt(ch['limit'])} | {state} |")
        lines.append("")
    return "\n".join(lines)


def write_report(run: str | Path, update: dict) -> dict:
    """Merge `update` into run/bench/report.json (bench and gate own their keys); re-render report.md."""
    run = RunDir.of(run).bench
    run.mkdir(parents=True, exist_ok=True)
    path = run / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(update)
    write_atomic(path, json.dumps(report, indent=2))
    write_atomic(run / "report.md", render_markdown(report))
    return report
