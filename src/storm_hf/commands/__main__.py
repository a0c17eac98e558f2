"""`python -m storm_hf.commands`: the `storm-hf` command."""

import sys

from . import main


sys.exit(main())
