"""transformers' own CLI (`transformers serve ...`) in a process where `import storm_hf` fails, whichever way storm_hf
is installed: what a user without storm_hf runs on a checkpoint storm_hf wrote. Used by tests/test_serving.py and
benchmarks/bench_serving.py.

    python scripts/transformers_without_storm_hf.py serve CHECKPOINT --trust-remote-code
"""

import sys


class HideStormHf:
    def find_spec(self, name, path=None, target=None):
        if name == "storm_hf" or name.startswith("storm_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden from this server)", name=name)


sys.meta_path.insert(0, HideStormHf())
from transformers.cli.transformers import main  # noqa: E402  (after the import hook)


sys.argv = ["transformers", *sys.argv[1:]]
main()
