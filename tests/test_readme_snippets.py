"""Every ```python block of README.md runs as written (CPU, the README's own small shapes)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5, "the README lost its code examples (or this test's pattern no longer finds them)"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs_as_written(code, tmp_path, monkeypatch):
    if "torchvision" in code:
        pytest.importorskip("torchvision")
    monkeypatch.chdir(tmp_path)  # blocks that save files (split.pt, runs/...) write them here
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)  # a NameError here: the block uses what it never defined


def _local_links(markdown: Path) -> list[tuple[str, Path]]:
    """``(link, resolved path)`` of every relative link and image in a Markdown file (anchors dropped)."""
    links = re.findall(r"\]\(([^)\s]+)\)", markdown.read_text())
    return [(link, (markdown.parent / link.split("#")[0]).resolve()) for link in links
            if not re.match(r"[a-z]+:", link) and not link.startswith("#")]


@pytest.mark.parametrize("page", ["README.md", "docs/results.md", "docs/backends.md", "docs/design.md", "CHANGELOG.md"])
def test_every_local_link_of_the_docs_points_to_a_file(page):
    path = README.parent / page
    missing = [link for link, target in _local_links(path) if not target.exists()]
    assert not missing, f"{page} links to files that do not exist: {missing}"


def test_the_results_page_cites_every_committed_benchmark_csv():
    """docs/make_results.py builds a section for every result file it knows; a new kind of CSV needs one too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_results", README.parent / "docs" / "make_results.py")
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    make_results.DRAW = False  # read, do not redraw the committed figures
    page = make_results.build()
    csvs = make_results.committed((README.parent / "benchmarks" / "results").glob("*.csv"))
    uncited = [p.name for p in csvs if p.name not in page]
    assert not uncited, f"docs/make_results.py does not show {uncited}"
