"""Soup stage: `python -m soups` (uniform, greedy, learned, learned_by_layer, ensemble, greedy_ensemble, wise_ft, model_stock).

Layout: `methods` (the methods, one interface, picked by name), the math in `average`, `greedy`,
`learned`, `ensemble`, `model_stock`; ingredient resolution and checks in `ingredients` and `checks`;
the one place that reads weights in `streaming`; scoring in `scoring`; the stage in `pipeline`.
"""
