"""Tables and figures: `python -m plots`.

- From records only: `python -m plots results=<dir> out=<dir>` writes main_table.{md,tex,csv} and figures 1
  (accuracy vs robustness), 2 (greedy trajectory) and 6 (WiSE-FT); `results` may also be a folder of the
  official `*_results.jsonl` files.
- From checkpoints and data (cached under plots.cache): `figure=landscape|angle|approx|soup_size|checkpoints`
  writes figures 3 (error landscape), 4 (angle vs gain), 5 (soup vs ensemble) and 2b (uniform vs greedy on
  random subsets).

Modules: methods (rows and styles), inputs, table, report (record figures), figures (drawing), render (files),
approx and geometry (the math), evaluator and compute (checkpoint-driven figures).
"""
