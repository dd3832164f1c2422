"""`python -m pipeline EXPERIMENT`: run an experiment's stages in order (docs/experiments.md)."""
