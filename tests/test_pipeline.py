"""The experiment sequences: the paper's cluster commands, and their dry run on this machine."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import run_in_process

from models.checkpoint import load_checkpoint, read_meta
from pipeline.steps import Step, experiment_steps, found_finished, time_left


def stage_of(argv: tuple[str, ...]) -> str:
    return argv[2]


def test_the_paper_sequence_covers_every_stage_and_goes_through_slurm():
    steps = experiment_steps("paper_vitb32")
    assert [stage_of(s.argv) for s in steps] == ["finetune", "finetune", "eval", "soups", "soups", "soups", "soups", "plots", "plots"]
    for step in steps:  # every GPU step is a SLURM job, the figures from checkpoints included; the tables read records
        launched = "-m" in step.argv and "hydra/launcher=slurm" in step.argv
        assert launched == (step.name != "tables and figures from the records"), step.argv
    assert "sweep=paper_random" in steps[1].argv


def test_the_dry_run_runs_the_paper_sequence_with_stand_ins():
    paper = experiment_steps("paper_vitb32")
    dry = experiment_steps("paper_vitb32_dryrun")
    assert stage_of(dry[0].argv) == "datasets.imagenet_miniature"  # data stand-in first

    def normalised(step):
        drop = {"hydra/launcher=slurm", "-m"}
        return [a.replace("paper_vitb32_dryrun", "paper_vitb32") for a in step.argv if a not in drop and not a.startswith("out=")]

    assert [normalised(s) for s in dry[1:]] == [normalised(s) for s in paper]


def test_time_left_scales_untimed_estimates_by_this_machines_pace():
    steps = [Step("a", (), 20.0), Step("b", (), 100.0), Step("c", (), 30.0)]
    assert time_left(steps, 0, {}, {}) == 150.0  # nothing measured yet: the recorded estimates
    # "a" took 50 s against its 20 s estimate: this host runs at 2.5x, so 2.5 * (100 + 30) is left.
    assert time_left(steps, 1, {}, {"a": 50.0}) == 325.0
    # A step timed on this machine before counts at that time, unscaled; the pace comes from "a" only.
    assert time_left(steps, 1, {"b": 40.0}, {"a": 50.0}) == 40.0 + 2.5 * 30.0
    # Steps that found their work finished are left out of timed_now by the caller (found_finished).


def test_a_step_found_its_work_finished_only_when_every_run_skipped():
    # what the runs of a step append (models.cli.report_outcome), never how long the step took
    assert found_finished("skip runs/a/model_0\nskip runs/a/model 1\n")
    assert not found_finished("skip runs/a/model_0\nrun runs/a/model_1\n")  # a grown sweep trains its new job
    assert not found_finished("")  # no resumable run (plots): the step did its work


def test_report_outcome_appends_to_the_pipelines_file(tmp_path, monkeypatch):
    from models.cli import OUTCOMES_ENV, report_outcome

    report_outcome("skip", "nowhere")  # outside the pipeline: nothing is written, nothing fails
    monkeypatch.setenv(OUTCOMES_ENV, str(tmp_path / "outcomes"))
    report_outcome("skip", tmp_path / "a b")
    report_outcome("run", tmp_path / "c")
    assert (tmp_path / "outcomes").read_text() == f"skip {tmp_path}/a b\nrun {tmp_path}/c\n"


def test_print_lists_the_commands():
    result = run_in_process("pipeline", "paper_vitb32", "--print")
    assert result.returncode == 0
    assert "python -m finetune -m experiment=paper_vitb32 sweep=paper_random hydra/launcher=slurm" in result.stdout


# Smaller than the experiment, same code paths; passed to every stage, as a user's overrides are. The sweep's
# fine-tunes train 1 epoch each (its random draw gives model_1 and model_2 6 and 9 epochs; the other drawn values
# stay; `fixed` is ignored by the steps without a sweep), and the figures from checkpoints use a 3 x 3 landscape
# grid and 100 images per set (defaults: 9 x 9 and every image).
SMALL = ("++sweep.fixed.epochs=1", "plots.grid=3", "plots.max_examples=100")
# Each step's jobs in the step's own process (Hydra's basic launcher, what `-m` uses without a launcher, as in
# experiment=folder): the experiment's submitit_local starts one process per job, 27 here, ~7 s of CPU each to
# start. Measured: 422 s of CPU for the first pass with submitit_local, 234 s with this. The submitit path is the
# same stage wrapper for every stage, run through real submitit jobs in test_finetune_stage; the launchers' skip
# of finished jobs is tested in test_cli. `make dryrun` runs the experiment as it is, through submitit_local.
IN_ONE_PROCESS = ("hydra/launcher=basic",)


@pytest.mark.slow
@pytest.mark.early("pipeline", "paper_vitb32_dryrun", *SMALL, *IN_ONE_PROCESS, times=2)  # the real `python -m pipeline`, run twice
def test_the_dry_run_passes_end_to_end_and_resumes(early):
    first, *again = early.wait()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    base = early.folder / "runs/paper_vitb32_dryrun"

    with open(base / "plots/plots/main_table.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    for method in ("best_individual", "uniform_soup", "greedy_soup", "learned_soup", "learned_soup_by_layer", "ensemble", "model_stock"):
        assert method in rows, sorted(rows)
        assert 0 <= float(rows[method]["id"]) <= 100

    # The uniform soup is the mean of the LP init (the paper's model_0) and the fine-tunes model_1, model_2, by hand.
    files = [base / "inits/lp/model.safetensors"] + [base / f"finetune/model_{i}/model.safetensors" for i in (1, 2)]
    ingredients = [load_checkpoint(f)[0] for f in files]
    soup, meta = load_checkpoint(base / "soups/uniform_soup/model.safetensors")
    assert meta.kind == "soup" and len(meta.ingredients) == 3
    for key, value in soup.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(i[key] for i in ingredients) / 3)
    assert read_meta(base / "inits/lp/model.safetensors").kind == "lp"

    # One LP fit in the whole sequence (the inits step); every sweep job read it from inits/lp.
    logs = {p: p.read_text() for p in base.rglob("*.log")}
    fits = [p for p, text in logs.items() if "linear probe: training accuracy" in text]
    assert [p.parent.name for p in fits] == ["lp"], fits
    for i in (1, 2):
        meta = read_meta(base / f"finetune/model_{i}/model.safetensors")
        assert meta.hparams["lp_init_from"] == str(base / "inits/lp/model.safetensors")
        assert meta.hparams["train_precision"] == "fp32" and meta.activation == "quick_gelu"
        assert meta.hparams["epochs"] == 1  # SMALL's fixed value over the drawn one

    # The same command again reuses every finished stage: every step found its work finished, nothing was rewritten.
    (second,) = again
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    written = {p: t for p, t in early.stamps[0].items() if p.name in ("model.safetensors", "results.jsonl", "DONE")}
    assert written and all(early.stamps[1][p] == t for p, t in written.items())
    resumable = [n for n, s in enumerate(experiment_steps("paper_vitb32_dryrun"), 1) if stage_of(s.argv) in ("finetune", "eval", "soups")]
    assert len(resumable) == 7 and all(f"step {n}: every run had finished" in second.stdout for n in resumable), second.stdout[-3000:]


def test_a_steps_own_arguments_win_over_the_users_overrides():
    # The inits step fits the heads with finetune.epochs=0; a user's finetune.epochs=1 after it would make
    # the LP init a one-epoch fine-tune that every sweep job refuses as its init.
    steps = experiment_steps("folder", extra=["data.root=/r", "finetune.epochs=1", "++finetune.init=lp"])
    inits, sweep = steps[1], steps[2]
    assert inits.name == "zero-shot and LP inits"
    assert "finetune.epochs=0" in inits.argv and "finetune.epochs=1" not in inits.argv
    assert "finetune.init=zeroshot,lp" in inits.argv and "++finetune.init=lp" not in inits.argv  # `++` sets the same key
    assert inits.withheld == ("finetune.epochs=1", "++finetune.init=lp")
    assert "data.root=/r" in inits.argv  # the keys the step does not set still reach it
    assert sweep.argv[-3:] == ("data.root=/r", "finetune.epochs=1", "++finetune.init=lp") and sweep.withheld == ()


def test_print_shows_the_withheld_overrides_beside_the_step(capsys):
    from pipeline.__main__ import main

    assert main(["folder", "data.root=/r", "finetune.epochs=1", "--print"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[1].splitlines()[0] == "# 2. zero-shot and LP inits  (the step sets these itself, so not passed: finetune.epochs=1)"
    assert "finetune.epochs=1" not in blocks[1].splitlines()[1]
    assert blocks[2].splitlines()[1].endswith("data.root=/r finetune.epochs=1")


@pytest.mark.parametrize(
    "extra,results",
    [
        ((), "results/demo"),
        (("data.workers=0", "finetune.progress=false", "hydra/launcher=local"), "results/demo"),  # how it runs, not what
        (("paths.data=/cluster/imagenet", "data.root=/cluster/world"), "results/demo"),  # where the data lives
        (("data.scale=small", "sweep.n=3"), "runs/demo/results"),
        (("name=mine",), "runs/mine/results"),
        (("sweep=paper_random",), "runs/demo/results"),
    ],
)
def test_the_committed_results_folder_takes_only_the_experiments_own_config(extra, results):
    steps = experiment_steps("demo", extra=list(extra))
    outs = [a for s in steps for a in s.argv if a.startswith("out=")]
    assert outs == [f"out={results}", f"out={results}"]  # the tables, and the figures from checkpoints


def test_the_summary_names_tables_and_basin_checks_at_chance(tmp_path):
    """The pipeline's last lines repeat what the table's `note` column and the basin check's `at_chance` say."""
    import json

    from pipeline.__main__ import at_chance_summary

    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "main_table.csv").write_text("method,id,note\nzeroshot,17.00,at chance\nuniform_soup,60.00,\nchance,16.67,\n")
    (tmp_path / "soups").mkdir()
    (tmp_path / "soups" / "basin.json").write_text(json.dumps({"ingredients": [{}, {}, {}], "at_chance": ["a", "b"]}))
    (tmp_path / "other.csv").write_text("method,id\nx,1\n")
    lines = at_chance_summary(tmp_path)
    assert len(lines) == 2
    assert lines[0].endswith("main_table.csv: 1 rows at chance (zeroshot): these models cannot do this task")
    assert lines[1].endswith("basin.json: 2 of 3 ingredients at chance on the held-out set")
    assert at_chance_summary(tmp_path / "soups" / "nothing_here") == []
