"""Tables and figures: `python -m plots`."""
