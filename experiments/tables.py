"""One Markdown table per kind of results file, for docs/results.md (experiments.results).

Each renderer takes a filed file ({"kind", "name", "source", "taken", "results"}) and returns lines. Numbers
are formatted here only, so the doc is a pure function of the files.
"""

from __future__ import annotations

from collections.abc import Callable

from experiments.curves import flattened, is_ours

# kind -> section title, in the doc's order
TITLES = {
    "kernels": "INT8 accuracy per CPU kernel class",
    "bench": "Accuracy, latency and size of every variant",
    "compare-yolo": "Detector vs Ultralytics YOLO",
    "compare-ssdlite": "Detector vs torchvision SSDLite",
    "compare-lraspp": "Segmenter vs torchvision LR-ASPP",
    "ablate-recipe": "Detector recipe ablation",
    "ablate-shift": "Domain-shift augmentation ablation",
    "thin-recipe": "Thin-structure recipe over seeds",
}
COMMANDS = {
    "kernels": "make kernels RUN=runs/{run}",
    "bench": "make bench RUN=runs/{run}",
    "compare-yolo": "make {name}",  # compare-yolo or compare-yolo-budget
    "compare-ssdlite": "make compare-ssdlite",
    "compare-lraspp": "python -m experiments.compare_lraspp --config {config} --out runs/{name}",
    "ablate-recipe": "python -m experiments.ablate_recipe --config {config} --out runs/{name} --seeds {seeds}{peers}",
    "ablate-shift": "python -m experiments.ablate_shift --config {config} --out runs/{name} --seeds {seeds}",
    "thin-recipe": "python -m experiments.thin_recipe --config {config} --out runs/{name} --seeds {seeds}",
}
SEG_KEYS = (("miou", "mIoU"), ("thin_iou", "thin IoU"), ("ods_f1", "ODS F1"), ("ois_f1", "OIS F1"),
            ("recall_1_2px", "recall 1-2 px"), ("boundary_f1", "boundary F1"))
DET_KEYS = (("map", "mAP@[.5:.95]"), ("map50", "mAP@.5"))


def num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def machine_of(results: dict) -> dict | None:
    return (results.get("setup") or {}).get("machine") or results.get("machine") or results.get("hardware")


def provenance(f: dict) -> list[str]:
    """Where the figures come from: machine, day, command, and the filed note when there is one."""
    r = f["results"]
    setup = r.get("setup") or {}
    m = machine_of(r)
    where = "an unnamed machine (the file does not say)" if m is None else (
        f"{m.get('model', '?')} ({m.get('vendor', '?')}), kernel class `{m.get('kernel_class', '?')}`, "
        f"{m.get('cores', '?')} cores, ONNX Runtime {m.get('onnxruntime', '?')}"
        + (f", torch {m['torch']}" if m.get("torch") else ""))
    run = f["name"].split("-", 1)[1] if f["kind"] in ("kernels", "bench") else ""
    peers = f" --peers {','.join(setup['peers'])}" if setup.get("peers") else ""
    command = COMMANDS[f["kind"]].format(run=run, name=f["name"], config=setup.get("config", "?"),
                                         seeds=setup.get("seeds", 1), peers=peers)
    when = f"Measured {setup['date']} on" if setup.get("date") else f"Filed {f['taken']} from a run on"
    lines = [f"{when} {where}. Refresh: `{command}`, then "
             f"`python -m experiments.results --take {f['source']}`."]
    if f.get("note"):
        lines += ["", f"> {f['note']}"]
    return lines + [""]


def latency_cells(r: dict) -> list[str]:
    """p50 ms at 1 and 2 threads; bench keeps full statistics per thread count, the experiments the p50."""
    lat = r.get("latency_ms") or {}
    return [num(v["p50"] if isinstance(v, dict) else v, 2) for v in (lat.get("1t"), lat.get("2t"))]


def cost_cells(r: dict) -> list[str]:
    return [num(r["params"] / 1e6, 2) if r.get("params") else "-", num(r.get("gflops"), 2)]


def compare(f: dict, keys) -> list[str]:
    """Ours beside its peers: accuracy, ORT fp32 latency side by side, size of the model; one block of rows
    per epoch budget when the run had several (compare-yolo --epochs 12,40,80)."""
    r = f["results"]
    setup = r.get("setup") or {}
    runs = r["budgets"] if "budgets" in r else {"": {k: v for k, v in r.items() if k not in ("setup", "curves")}}
    epochs = setup.get("epochs")
    epochs = ", ".join(map(str, epochs)) if isinstance(epochs, list) else epochs
    head = ["model", *(["epochs"] if "budgets" in r else []), *[label for _, label in keys],
            *(["best val mAP", "flattened"] if "curves" in r else []), "ORT 1t ms", "ORT 2t ms", "params M", "GFLOPs"]
    rows, notes = [], []
    for budget, models in runs.items():
        curves = (r.get("curves") or {}).get(budget or str(epochs), {})
        for n, m in models.items():
            flat = {True: "yes", False: "no", None: "-"}[flattened(curves.get(n, []))] if curves else "-"
            rows.append([n, *([budget] if budget else []), *[num(m.get(k)) for k, _ in keys],
                         *([num(m.get("best_val_map")), flat] if "curves" in r else []),
                         *latency_cells(m), *cost_cells(m)])
        notes += summary(models, keys, f"{budget} epochs: " if budget else "")
        recipe = (setup.get("ours_recipe") or {}).get(budget)
        if recipe and recipe != setup.get("config"):
            notes.append(f"{budget} epochs: ours trained with the long-run recipe `{recipe}`.")
    lines = provenance(f) + [f"Same split ({setup.get('split', 'val')}), input {setup.get('input_size')}, "
                             f"{epochs} epochs for every model; fp32 ONNX Runtime, batch 1, p50."
                             + (" Best val mAP: the best epoch of each trainer's own validation; flattened: "
                                "its last 5 epochs gained < 0.005 on the best before them." if "curves" in r else ""),
                             ""]
    return lines + table(head, rows) + ([""] + notes if notes else [])


def summary(models: dict, keys, prefix: str) -> list[str]:
    """One line per model of ours (`ours`, or `ours-<preset>` of compare-yolo --presets) against the peers."""
    ours = [n for n in models if is_ours(n)]
    peers = [n for n in models if n not in ours]
    if not ours or not peers:
        return []
    key = keys[0][0]
    best = max(peers, key=lambda n: models[n][key])
    fast = min(peers, key=lambda n: models[n]["latency_ms"]["1t"])
    return [f"{prefix}{n} - {best} (best peer): {o[key] - models[best][key]:+.3f} {keys[0][1]}; {n} / {fast} "
            f"(fastest peer) latency: {o['latency_ms']['1t'] / models[fast]['latency_ms']['1t']:.2f} (1 thread), "
            f"{o['latency_ms']['2t'] / models[fast]['latency_ms']['2t']:.2f} (2 threads)."
            for n, o in ((n, models[n]) for n in ours)]


def ablate_recipe(f: dict) -> list[str]:
    arms = f["results"]["arms"]
    seeds = max(len(a.get("per_seed", [])) for a in arms.values())
    head = ["arm", "mAP@[.5:.95]", "mAP@.5", *(["per-seed mAP"] if seeds > 1 else []), "ORT 1t ms", "ORT 2t ms",
            "params M", "GFLOPs", "train s"]
    rows = [[name, num(a["map"], 4), num(a["map50"], 4),
             *([", ".join(num(s["map"], 4) for s in a["per_seed"])] if seeds > 1 else []),
             *latency_cells(a), *cost_cells(a), num(a.get("seconds"), 0)] for name, a in arms.items()]
    peers = f["results"].get("peers", {})
    rows += [[f"{name} (latency only)", "-", "-", *(["-"] if seeds > 1 else []), *latency_cells(p), *cost_cells(p),
              "-"] for name, p in peers.items()]
    notes = [f"{name} / {peer} latency: {a['latency_ms']['1t'] / p['latency_ms']['1t']:.2f} (1 thread), "
             f"{a['latency_ms']['2t'] / p['latency_ms']['2t']:.2f} (2 threads)"
             for peer, p in peers.items() for name, a in arms.items()]
    where = (" Peers are timed in the same rounds at their input size " +
             ", ".join(f"{n} {p.get('input_size')}" for n, p in peers.items()) + "; their accuracy is not measured "
             "here.") if peers else ""
    return (provenance(f) + [f"Best val epoch per arm, mean over {seeds} seed(s).{where}", ""] + table(head, rows)
            + ([""] + notes if notes else []))


def ablate_shift(f: dict) -> list[str]:
    r = f["results"]
    head = ["model", "metric", "clean, none", "clean, shift", "shifted, none", "shifted, shift"]
    rows = []
    for task in ("detector", "segmenter"):
        if task not in r.get("none", {}):
            continue
        n, s = r["none"][task], r["shift"][task]
        for m in n["clean"]:
            rows.append([task, m, num(n["clean"][m], 4), num(s["clean"][m], 4), num(n["shifted_mean"].get(m), 4),
                         num(s["shifted_mean"].get(m), 4)])
    return provenance(f) + ["Trained with `augment: none` and `shift` on one budget; shifted = mean over the "
                            f"{(r.get('setup') or {}).get('split', 'test')}_* splits.", ""] + table(head, rows)


def kernels(f: dict) -> list[str]:
    r = f["results"]
    lines = provenance(f)
    for task in ("detector", "segmenter"):
        t = r.get(task)
        if not t:
            continue
        lines += [f"**{task}** ({t['metric']}, {t['images']} val images; INT8 file made for `{t['made_for']}`): "
                  f"fp32 {num(t['fp32'], 4)}, exact INT8 semantics {num(t['exact'], 4)}.", ""]
        rows = []
        for row, v in t["rows"].items():
            onnx, ort_ = v.get("onnx") or {}, v.get("ort") or {}
            path = (onnx.get("kernel_path") or {}).get("path", "")
            rows.append([row, v["stands_for"], num(onnx.get(t["metric"]), 4), num(ort_.get(t["metric"]), 4),
                         f"{onnx['vs_exact']:+.4f}" if onnx.get("vs_exact") is not None else "-", path])
        lines += table(["kernels", "stands for", ".onnx", ".ort", ".onnx - exact", "kernel path (ARM)"], rows)
        lines.append("")
    runs = r.get("deploy_run") or {}
    if runs:
        verdicts = [f"{p} {'agrees' if v.get('agree') else 'DISAGREES'} ({v.get('frames')} frames)"
                    for p, v in runs.items()]
        lines.append("`deploy run` in the ARM64 userland vs this machine fed the profile's kernel outputs: "
                     + "; ".join(verdicts) + ".")
    if r.get("wall_seconds") is not None:
        lines.append(f"Whole check: {r['wall_seconds'] / 60:.1f} min wall time (emulated time is not latency).")
    return lines


def bench(f: dict) -> list[str]:
    r = f["results"]
    lines = provenance(f)
    for task, keys in (("detector", DET_KEYS), ("segmenter", SEG_KEYS[:3])):
        variants = r.get(task) or {}
        rows, skipped = [], []
        for name, v in variants.items():
            if not isinstance(v, dict) or "latency_ms" not in v:
                skipped.append(f"{name} ({v.get('skipped', 'not run')})" if isinstance(v, dict) else name)
                continue
            rows.append([name, *[num(v.get(k), 4) for k, _ in keys], *latency_cells(v), num(v.get("size_mb"), 3),
                         num(v.get("speedup_1t"), 2), num(v.get("speedup_2t"), 2)])
        if rows:
            lines += [f"**{task}** ({r.get('split', 'val')} split)", ""]
            lines += table(["variant", *[label for _, label in keys], "1t ms", "2t ms", "size MB",
                            "speed-up 1t", "speed-up 2t"], rows)
            if skipped:
                lines += ["", "Not measured here: " + "; ".join(skipped) + "."]
            lines.append("")
    return lines


def thin_recipe(f: dict) -> list[str]:
    r = f["results"]
    setup = r.get("setup") or {}
    cols = [("thin_iou", "thin IoU"), ("ods_f1@2", "ODS 2 px"), ("ois_f1@2", "OIS 2 px"), ("ods_f1@bsds", "ODS bsds"),
            ("ois_f1@bsds", "OIS bsds"), ("boundary_f1", "boundary F1"), ("recall_1px", "recall 1 px"),
            ("recall_1_2px", "recall 1-2 px")]
    cols = [c for c in cols if any(s.get(c[0]) is not None for s in r["seeds"])]  # what this run measured
    rows = [[str(s["seed"]), *[num(s.get(k), 4) for k, _ in cols], num(s.get("seconds"), 0)] for s in r["seeds"]]
    rows.append(["mean", *[num(r["mean"].get(k), 4) for k, _ in cols], "-"])
    data = "generated scenes" if setup.get("generated") else "real photos"
    return provenance(f) + [f"{setup.get('images')} val images of `{setup.get('data')}` ({data}), "
                            f"{setup.get('epochs')} epochs per seed, input {setup.get('input_size')}; bsds = "
                            "0.0075 x the image diagonal.", ""] + table(["seed", *[c for _, c in cols], "train s"],
                                                                        rows)


RENDER: dict[str, Callable[[dict], list[str]]] = {
    "kernels": kernels,
    "bench": bench,
    "compare-yolo": lambda f: compare(f, DET_KEYS),
    "compare-ssdlite": lambda f: compare(f, DET_KEYS),
    "compare-lraspp": lambda f: compare(f, SEG_KEYS),
    "ablate-recipe": ablate_recipe,
    "ablate-shift": ablate_shift,
    "thin-recipe": thin_recipe,
}
