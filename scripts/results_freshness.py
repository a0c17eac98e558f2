"""Which results files measured the code as it is now: for every `benchmarks/results/*.json` written through
`benchmarks/common.py`, the measured code (`src/`, `benchmarks/common.py`, the benchmark script its command names and
the benchmark modules that script imports) is compared, with git, between the commit the file records and HEAD.

A file is *current* when none of that code changed since its commit and none of it was uncommitted when it ran. A
Python file whose syntax tree is the same once docstrings are removed (a comment or docstring edit) counts as
unchanged; any other file that differs counts as changed.
The table goes into docs/benchmarks.md between `<!-- freshness -->` markers, so that "rerun on the current code" is
checked by this script rather than written by hand. It needs the git history of the recorded commits (not a shallow
clone).

    python scripts/results_freshness.py           # rewrite the table in docs/benchmarks.md
    python scripts/results_freshness.py --check   # exit 1 if the table differs from what the history says
"""

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- freshness -->\n)(.*?)(<!-- /freshness -->)", re.DOTALL)
SCRIPT = re.compile(r"python (benchmarks/\w+\.py)")
IMPORT = re.compile(r"^(?:from|import) (\w+)", re.MULTILINE)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def measured_code(script: str) -> list[str]:
    """`src/`, `benchmarks/common.py`, `script` and the benchmark modules it imports, recursively."""
    paths, pending = {"src", "benchmarks/common.py"}, [script]
    while pending:
        path = pending.pop()
        if path in paths or not (ROOT / path).is_file():
            continue
        paths.add(path)
        for module in IMPORT.findall((ROOT / path).read_text()):
            pending.append(f"benchmarks/{module}.py")
    return sorted(paths)


def code_of(source: str) -> str:
    """The syntax tree of Python `source` without docstrings or comments, as text."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_changed(path: str, commit: str) -> bool:
    """Whether `path` differs between `commit` and HEAD in more than docstrings and comments."""
    if not path.endswith(".py"):
        return True
    try:
        before, after = (git("show", f"{revision}:{path}") for revision in (commit, "HEAD"))
    except subprocess.CalledProcessError:  # added or deleted since
        return True
    return code_of(before) != code_of(after)


def freshness(payload: dict) -> tuple[str, str]:
    """(measured at, what changed since) of one results file's provenance."""
    provenance = payload["provenance"]
    script = SCRIPT.search(provenance["command"])
    if script is None:
        raise ValueError(f"no `python benchmarks/<script>.py` in the recorded command {provenance['command']!r}")
    paths = measured_code(script[1])
    changed = [
        path
        for path in git("diff", "--name-only", provenance["commit"], "HEAD", "--", *paths).split()
        if code_changed(path, provenance["commit"])
    ]
    uncommitted = [path for path in provenance.get("uncommitted_files", []) if path.startswith(tuple(paths))]
    notes = []
    if changed:
        notes.append("changed since: " + ", ".join(f"`{path.removeprefix('src/storm_hf/')}`" for path in changed))
    if uncommitted:
        notes.append("ran with uncommitted changes to " + ", ".join(f"`{path}`" for path in uncommitted))
    return f"{provenance['commit'][:7]}, {provenance['date']}", "; ".join(notes) or "**current**"


def table() -> str:
    lines = ["| results file | measured at | measured code since then |", "|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        payload = json.loads(path.read_text())
        if "provenance" not in payload:
            lines.append(f"| `{path.stem}.md` | not recorded (written before `benchmarks/common.py`) | unknown |")
            continue
        measured_at, since = freshness(payload)
        lines.append(f"| `{path.stem}.md` | {measured_at} | {since} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the table in --doc differs")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    text = args.doc.read_text()
    if BLOCK.search(text) is None:
        raise SystemExit(f"{args.doc} has no <!-- freshness --> ... <!-- /freshness --> block")
    expected = BLOCK.sub(lambda match: match[1] + table() + match[3], text)
    if args.check:
        if expected != text:
            print(f"{args.doc}: the freshness table is out of date; run python scripts/results_freshness.py")
            return 1
        return 0
    args.doc.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
