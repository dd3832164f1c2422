"""Evaluation stage: `python -m eval`."""
