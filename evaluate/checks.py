"""The gate's check records: a value against a limit, a check that could not run, and the stages to blame."""

from __future__ import annotations

STAGES = ("quantization", "preprocessing", "runtime")


def check(task: str, name: str, value, limit, sense: str, stage: str | None = None,
          interval: list[float] | None = None, strict: bool = False) -> dict:
    """`sense` "min": value >= limit passes, "max": value <= limit. No limit or no value: passes, unjudged.
    With a confidence `interval` of the value (evaluate.bootstrap), a value past its limit whose interval still
    reaches the limit is `within_noise`: a warning that passes, and fails only when `strict`."""
    if limit is None or value is None:
        return {"name": f"{task}: {name}", "value": value, "limit": limit, "passed": True, "stage": stage}
    passed = value >= limit if sense == "min" else value <= limit
    out = {"name": f"{task}: {name}", "value": float(value), "limit": float(limit), "passed": bool(passed),
           "stage": stage}
    if interval is not None:
        out["interval"] = [float(interval[0]), float(interval[1])]
        if not passed and (interval[1] >= limit if sense == "min" else interval[0] <= limit):
            out["within_noise"], out["passed"] = True, not strict
    return out


def skipped_check(task: str, name: str, reason: str) -> dict:
    """A check that could not run: printed as [skip] with its reason, a <skipped> case in JUnit."""
    return {"name": f"{task}: {name}", "value": None, "limit": None, "passed": True, "stage": None,
            "skipped": reason}


def blame(result: dict) -> str:
    """The stages whose checks failed: 'none', or some of 'quantization', 'preprocessing', 'runtime' joined by +."""
    failed = {c["stage"] for c in result["checks"] if c.get("stage") and not c["passed"]}
    return " + ".join(s for s in STAGES if s in failed) or "none"
