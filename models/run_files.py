"""The names of the files a run folder holds (docs/design.md, "Runs on disk"): read by the stage wrapper
(models/cli.py), the results store and every reader of finished runs."""

DONE_FILE = "DONE"  # written last by a finished run, holding its config's sha256
FAILED_FILE = "FAILED"  # a failed attempt's error
RUN_CONFIG_FILE = "run_config.json"  # the resolved config a run folder belongs to
RESULTS_FILE = "results.jsonl"  # the run's records, one JSON object per (model, dataset)
