"""Evaluation: metrics, latency benchmark, report, gate."""
