"""Print the lowest or the newest transformers release that storm-hf's requirement in setup.cfg allows (from PyPI).

    python scripts/transformers_versions.py lowest|newest

CI runs the test suite on both (.ci/run).
"""

import configparser
import json
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def transformers_requirement() -> Requirement:
    config = configparser.ConfigParser()
    config.read(Path(__file__).parents[1] / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return next(Requirement(line) for line in lines if line.strip().startswith("transformers"))


def index_versions() -> list[str]:
    """The transformers versions on the package index (pip's)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "transformers", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(listing.stdout)["versions"]


def allowed_releases(requirement: Requirement, versions: list[str]) -> list[Version]:
    """The releases (no pre-releases) among `versions` that `requirement` allows, oldest first."""
    allowed = sorted(
        version for version in map(Version, versions) if not version.is_prerelease and version in requirement.specifier
    )
    if not allowed:
        raise SystemExit(f"No transformers release on the index satisfies {requirement}.")
    return allowed


if __name__ == "__main__":
    if sys.argv[1:] not in (["lowest"], ["newest"]):
        raise SystemExit(__doc__)
    releases = allowed_releases(transformers_requirement(), index_versions())
    print(releases[0] if sys.argv[1] == "lowest" else releases[-1])
