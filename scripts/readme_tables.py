"""Fills the benchmark tables of the README and the docs/ pages from the results files, so that they cannot drift from
the evidence.

Every block `<!-- results:NAME -->` ... `<!-- /results:NAME -->` in README.md and docs/*.md gets the headline table of
`benchmarks/results/NAME.md` (the part between its `<!-- headline -->` markers, which `benchmarks/common.py`'s
`write_results` writes) and a line naming the file, the commit it was measured at, its date and load.

    python scripts/readme_tables.py           # rewrite README.md and docs/*.md
    python scripts/readme_tables.py --check   # exit 1, naming the blocks, if one of them differs (CI)
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)
HEADLINE = re.compile(r"<!-- headline -->\n(?P<table>.*?)\n<!-- /headline -->", re.DOTALL)


def source_line(name: str, results: Path = RESULTS, document: Path = ROOT / "README.md") -> str:
    """Where the table comes from: the results file (linked relative to `document`), and the commit, date and load its
    .json records."""
    payload = json.loads((results / f"{name}.json").read_text())
    run = payload.get("provenance") or payload.get("environment")
    if run is None:
        raise ValueError(f"benchmarks/results/{name}.json records no provenance or environment")
    dirty = run.get("dirty") or "uncommitted" in run["commit"]  # the older scripts' commit strings say so
    commit = run["commit"][:7] + (" + uncommitted changes" if dirty else "")
    loads = [*run.get("load_before", [])[:1], *run.get("load_after", [])[:1]]
    load = f", load {min(loads):g}-{max(loads):g}" if loads else ""
    link = Path(os.path.relpath(RESULTS / f"{name}.md", document.resolve().parent)).as_posix()
    return f"From [`benchmarks/results/{name}.md`]({link}): commit {commit}, {run['date']}{load}."


def block_body(name: str, results: Path = RESULTS, document: Path = ROOT / "README.md") -> str:
    path = results / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"{document.name} names results:{name}, but {path} does not exist")
    match = HEADLINE.search(path.read_text())
    if match is None:
        raise ValueError(f"{path} has no <!-- headline --> ... <!-- /headline --> table")
    return f"{match['table'].strip()}\n\n{source_line(name, results, document)}\n"


def filled(text: str, results: Path = RESULTS, document: Path = ROOT / "README.md") -> str:
    """`text` (the contents of `document`) with every results block filled from `results`."""
    return BLOCK.sub(lambda match: match[1] + block_body(match["name"], results, document) + match[4], text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a document differs from the results files")
    parser.add_argument(
        "--documents", type=Path, nargs="+", default=[ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args(argv)
    failed = False
    for document in args.documents:
        text = document.read_text()
        expected = filled(text, args.results, document)
        if not args.check:
            document.write_text(expected)
            continue
        stale = [
            match["name"]
            for match, new in zip(BLOCK.finditer(text), BLOCK.finditer(expected))
            if match["body"] != new["body"]
        ]
        if stale:
            failed = True
            print(
                f"{document.name}: the tables of {', '.join(stale)} differ from benchmarks/results/; run "
                "`python scripts/readme_tables.py`",
                file=sys.stderr,
            )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
