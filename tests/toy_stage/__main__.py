"""A toy stage for the wrapper's tests (tests/test_cli.py): `python -m toy_stage seed=N` (run from tests/ or in
process). seed=1 is a user's mistake, seed=2 a bug; every other seed writes work.txt. Runs are named s<seed>,
unless --own-names leaves the naming to the wrapper."""

import sys

from models.cli import output_dir, stage_entry
from models.errors import UserError


def run(cfg):
    if cfg.seed == 1:
        raise UserError("seed: 1 is unlucky; pick another")
    if cfg.seed == 2:
        raise RuntimeError("a bug")
    (output_dir() / "work.txt").write_text(str(cfg.seed))


def main():
    if "--own-names" in sys.argv:
        sys.argv.remove("--own-names")
    else:
        sys.argv.append("run_name=s${seed}")
    stage_entry("plots", run)()


if __name__ == "__main__":
    main()
