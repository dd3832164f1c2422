"""The soups stage reads an eval run's float32 logits for the ensembles' members (eval.logits_from)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from test_soups_stage import base_state, classifier_logits, fake_sets, soup_cfg, write_sweep  # noqa: F401  (fixture)

from models.checkpoint import sha256_prefix
from models.cli import identity_config
from models.logits import save_logits
from models.results import append_records
from soups.stage import run_soup


def fake_eval_run(folder, cfg, paths, planted, dtype="float32"):
    """An eval run folder as the eval stage writes it, whose logits for `planted` members are made up."""
    folder.mkdir(parents=True)
    recorded_cfg = identity_config(cfg)
    recorded_cfg["eval"]["logits_dtype"] = dtype
    (folder / "run_config.json").write_text(json.dumps(recorded_cfg))
    records = []
    for i, logits in planted.items():
        for dataset, x in logits.items():
            save_logits(folder, f"model_{i}", dataset, x, torch.arange(len(x)) % 3)
            checkpoint = {"path": str(paths[i]), "sha256": sha256_prefix(paths[i])}
            records.append(
                {
                    "model_id": f"model_{i}",
                    "kind": "individual",
                    "role": "id",
                    "top1": 0.5,
                    "dataset": dataset,
                    "n": len(x),
                    "precision": "fp32",
                    "checkpoint": checkpoint,
                }
            )
    append_records(folder, records)
    (folder / "DONE").write_text("")


def test_ensemble_reads_recorded_member_logits_and_runs_the_others(tmp_path, base_state):  # noqa: F811
    paths = write_sweep(tmp_path / "sweep", base_state, 3, scale=0.5)
    cfg = soup_cfg("ensemble", tmp_path / "sweep")
    sets = {s.name: s for s in fake_sets(cfg.data, None, ["heldout", "photo", "sketch"])}
    # members 0 and 2 get made-up logits (not what their weights compute), member 1 has none recorded
    planted = {
        i: {name: torch.randn(len(s.dataset), 3, generator=torch.Generator().manual_seed(i)) for name, s in sets.items()} for i in (0, 2)
    }
    fake_eval_run(tmp_path / "eval", cfg, paths, planted)

    out = tmp_path / "out"
    run_soup(soup_cfg("ensemble", tmp_path / "sweep", f"eval.logits_from={tmp_path / 'eval'}"), out, [], fake_sets)
    predictions = load_file(str(out / "predictions.safetensors"))
    for name, eval_set in sets.items():
        expected = (planted[0][name] + classifier_logits(paths[1], eval_set) + planted[2][name]) / 3
        torch.testing.assert_close(predictions[f"ensemble/{name}/logits"].float(), expected, atol=2e-3, rtol=1e-3)


def test_recorded_logits_of_other_data_or_lower_precision_are_not_used(tmp_path, base_state):  # noqa: F811
    paths = write_sweep(tmp_path / "sweep", base_state, 2, scale=0.5)
    cfg = soup_cfg("ensemble", tmp_path / "sweep")
    sets = {s.name: s for s in fake_sets(cfg.data, None, ["heldout", "photo", "sketch"])}
    planted = {i: {name: torch.randn(len(s.dataset), 3) for name, s in sets.items()} for i in (0, 1)}
    other_data = soup_cfg("ensemble", tmp_path / "sweep", "data.seed=7")
    fake_eval_run(tmp_path / "eval_other_data", other_data, paths, planted)
    fake_eval_run(tmp_path / "eval_float16", cfg, paths, planted, dtype="float16")
    for folder in ("eval_other_data", "eval_float16"):
        out = tmp_path / folder / "soup"
        run_soup(soup_cfg("ensemble", tmp_path / "sweep", f"eval.logits_from={tmp_path / folder}"), out, [], fake_sets)
        predictions = load_file(str(out / "predictions.safetensors"))
        for name, eval_set in sets.items():
            expected = sum(classifier_logits(p, eval_set) for p in paths) / 2
            torch.testing.assert_close(predictions[f"ensemble/{name}/logits"].float(), expected, atol=1e-2, rtol=1e-3)
