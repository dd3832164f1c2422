"""Soup stage: `python -m soups`."""
