"""benchmarks.gpu_check: its skip without CUDA, its comparisons, and its plumbing run on the CPU against itself."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out == "gpu_check: skipped, no CUDA device here (torch.cuda.is_available() is False); run make gpucheck on a GPU machine\n"


def test_the_errors_are_relative_to_what_training_changed():
    initial = {"w": torch.zeros(2), "steps": torch.tensor(3)}
    reference = {"w": torch.tensor([3.0, 4.0]), "steps": torch.tensor(5)}  # moved by 5 (L2)
    other = {"w": torch.tensor([3.3, 4.4]), "steps": torch.tensor(9)}  # off by 0.5; integer buffers are not compared
    assert gpu_check.update_error(other, reference, initial) == pytest.approx(0.1)
    logits = torch.tensor([[0.0, 10.0], [4.0, 2.0]])  # spread 10
    shifted = torch.tensor([[0.5, 10.0], [1.0, 2.0]])  # largest error 3 (row 2), row 2's argmax flips
    assert gpu_check.logits_error(shifted, logits) == (pytest.approx(0.3), 0.5)
    assert gpu_check.verdict("fp16", 0.01, 0.01, 0.96) and not gpu_check.verdict("fp16", 0.04, 0.01, 0.96)


def test_on_the_cpu_against_itself_every_difference_is_zero(capsys):
    assert gpu_check.main(["--device", "cpu", "--arch", "TinyCLIP", "--steps", "2", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split(" ")[0] in gpu_check.TOLERANCES]
    assert [r.split()[0] for r in rows] == ["fp32", "ddp_fp32", "eval_fp32", "eval_amp"]  # bf16, fp16 need CUDA
    for row in rows:  # the same computation on the same device: bit for bit
        assert "weights 0.00e+00  logits 0.00e+00  argmax 100.0%" in row and row.endswith("ok")
    assert not torch.distributed.is_initialized()  # its one-process group is gone
