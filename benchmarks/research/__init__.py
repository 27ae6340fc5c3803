"""Helpers of benchmarks/research.py (baselines, report) and, beside them, its stored results:
one `<entry>.json` per experiment entry and the PNG plots RESULTS_RESEARCH.md shows."""
