# The two commands a user needs: `make demo` and `make test`. Both build .venv first if it is
# missing or older than the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo dryrun test lint format bench gpucheck clean-demo

venv: $(STAMP)

# Python keeps the bytecode it compiles (a PYTHONDONTWRITEBYTECODE in the environment would make each of the
# test suite's ~100 processes, and each stage of a pipeline, compile torch's modules again).
unexport PYTHONDONTWRITEBYTECODE

# uv installs the same pinned packages as pip, several times faster (docs/benchmarks.md); the last line compiles,
# once, the modules every stage imports (uv, unlike pip, compiles nothing at install).
$(STAMP): requirements.txt requirements-dev.txt requirements-overrides.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements-dev.txt --override requirements-overrides.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -c "import finetune.train, soups.stage, eval.runner, plots.report, plots.compute, pipeline.steps"
	touch $(STAMP)

# The paper in miniature on the embedded world; finished stages are reused, a killed run resumes.
demo: venv
	$(PY) -m pipeline demo

# The cluster sequence of experiment=paper_vitb32 on this machine, with stand-ins (CI runs it too).
dryrun: venv
	$(PY) -m pipeline paper_vitb32_dryrun

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) -m benchmarks

clean-demo:
	rm -rf runs/demo results/demo

# The GPU code paths (CUDA fp32, bf16, fp16 + scaler, DDP over NCCL, AMP eval) against the CPU: at most
# 5 minutes on one GPU; without CUDA it says so and exits 0 (benchmarks/gpu_check.py).
gpucheck: venv
	$(PY) -m benchmarks.gpu_check
