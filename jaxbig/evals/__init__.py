"""Evaluators. Each module exposes `Evaluator(...)` with `run(params) -> {name: float}`."""
