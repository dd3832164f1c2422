"""`python -m eval`: see `python -m eval --help`."""

from eval.runner import run
from models.cli import stage_entry

main = stage_entry("eval", run)

if __name__ == "__main__":
    main()
