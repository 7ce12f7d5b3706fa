"""Evaluation: benchmarks (evaluate, ablate, test), metrics, reports."""
