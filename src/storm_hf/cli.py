"""Deprecated: the `storm-hf` command lives in `storm_hf.commands` (one module per subcommand)."""

import sys
import warnings

from .commands import build_parser, main


# Run as `python -m storm_hf.cli` this module is `__main__`, where Python shows DeprecationWarnings by default.
warnings.warn(
    "`storm_hf.cli` moved to `storm_hf.commands` (`from storm_hf.commands import main`, `python -m "
    "storm_hf.commands`); this alias will be removed in the next release.",
    DeprecationWarning,
    stacklevel=1 if __name__ == "__main__" else 2,
)

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
