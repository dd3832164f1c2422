"""The docs name what exists: every project path a doc cites, and every option of the config groups."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

TOP = ("models", "soups", "plots", "eval", "finetune", "datasets", "pipeline", "benchmarks", "tests", "conf", "docs", "results")
# a project path: a top-level folder, then a file with a known suffix (placeholders such as NAME or <name> are not paths)
PATH = re.compile(r"(?<![\w./<-])((?:{})/[\w./-]*\w\.(?:py|md|yaml|json|csv|txt|png|jsonl))".format("|".join(TOP)))
DOCS = sorted({REPO / "README.md", *(REPO / "docs").glob("*.md"), *REPO.glob("*/README.md"), *REPO.glob("*/*/README.md")})


def cited_paths(text: str) -> list[str]:
    return [p for p in PATH.findall(text) if not re.search(r"/[A-Z]+\.", p)]


def test_cited_paths_are_found_in_a_constructed_text():
    text = "see `soups/methods.py` and docs/design.md; conf/experiment/NAME.yaml is a placeholder; runs/demo/x.json is output"
    assert cited_paths(text) == ["soups/methods.py", "docs/design.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_project_path_a_doc_names_exists(doc):
    missing = [path for path in cited_paths(doc.read_text()) if not (REPO / path).exists()]
    assert not missing, f"{doc.relative_to(REPO)} names {missing}"


def test_every_section_of_the_design_doc_that_code_or_docs_cite_exists():
    design = (REPO / "docs/design.md").read_text()
    sections = set(re.findall(r"^## (.+)$", design, flags=re.MULTILINE)) | set(re.findall(r"^\*\*(.+?)\.\*\*", design, flags=re.MULTILINE))
    files = [*DOCS, *(p for package in TOP[:8] for p in (REPO / package).rglob("*.py"))]
    cited = {(f, " ".join(c.split())) for f in files for c in re.findall(r'design\.md,\s+"([^"]+)"', f.read_text())}
    assert len(cited) > 5 and all(section in sections for _, section in cited), sorted(
        f"{f.relative_to(REPO)}: {s!r}" for f, s in cited if s not in sections
    )


def test_the_design_docs_group_table_lists_every_option():
    table = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", (REPO / "docs/design.md").read_text(), flags=re.MULTILINE))
    for group in ("model", "data", "sweep", "soup", "experiment", "logger"):
        listed = re.findall(r"`(\w+)`", table[group].split(";")[0])
        assert sorted(listed) == sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")), group


def test_the_plots_config_lists_every_figure():
    from plots.catalog import CHOICES

    comment = next(line for line in (REPO / "conf/plots/default.yaml").read_text().splitlines() if line.startswith("figure:"))
    listed = re.findall(r"\w+", comment.split("#", 1)[1].replace("records:", "").replace("checkpoints:", "").replace("(all four)", ""))
    assert sorted(listed) == sorted(CHOICES)
