"""scripts/readme_tables.py: README blocks filled from results files, and --check failing when they differ."""

import importlib.util
import json
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "readme_tables.py"
spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)

TABLE = "| a | b |\n|---|---|\n| 1 | 2 |"


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "bench.md").write_text(f"# Bench\n\n<!-- headline -->\n{TABLE}\n<!-- /headline -->\n\nbody\n")
    provenance = {"commit": "0123456789abcdef", "dirty": False, "date": "2026-12-06 22:00 UTC"}
    (folder / "bench.json").write_text(
        json.dumps({"provenance": {**provenance, "load_before": [1.5], "load_after": [3]}})
    )
    return folder


def test_a_block_gets_the_headline_table_and_its_source(results):
    readme = "intro\n<!-- results:bench -->\nold table\n<!-- /results:bench -->\nend\n"
    expected = (
        f"intro\n<!-- results:bench -->\n{TABLE}\n\nFrom [`benchmarks/results/bench.md`](benchmarks/results/bench.md): "
        "commit 0123456, 2026-12-06 22:00 UTC, load 1.5-3.\n<!-- /results:bench -->\nend\n"
    )
    assert readme_tables.filled(readme, results) == expected
    assert readme_tables.filled(expected, results) == expected  # filling is idempotent


def test_check_fails_on_a_stale_block_and_passes_on_a_filled_one(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:bench -->\n| a | b |\n|---|---|\n| 1 | 3 |\n<!-- /results:bench -->\n")
    argv = ["--documents", str(readme), "--results", str(results)]
    assert readme_tables.main([*argv, "--check"]) == 1
    assert "README.md: the tables of bench differ" in capsys.readouterr().err
    assert readme_tables.main(argv) == 0  # rewrites the README
    assert readme_tables.main([*argv, "--check"]) == 0


def test_a_docs_page_links_the_results_file_from_its_own_folder(results):
    page = readme_tables.ROOT / "docs" / "page.md"  # never written: the link is computed from the path
    filled = readme_tables.filled("<!-- results:bench -->\n<!-- /results:bench -->\n", results, page)
    assert "From [`benchmarks/results/bench.md`](../benchmarks/results/bench.md): commit 0123456" in filled


def test_a_results_file_without_a_headline_is_named(results):
    (results / "bench.md").write_text("# Bench\n\n| a |\n|---|\n")
    with pytest.raises(ValueError, match="bench.md has no <!-- headline -->"):
        readme_tables.filled("<!-- results:bench -->\n<!-- /results:bench -->\n", results)
    with pytest.raises(FileNotFoundError, match="results:missing"):
        readme_tables.filled("<!-- results:missing -->\n<!-- /results:missing -->\n", results)
