"""Deprecated: `storm-hf demo` lives in `storm_hf.synthetic.demo`."""

import warnings

from .synthetic.demo import BUNDLED_CHECKPOINT, bundled_checkpoint, run_demo


warnings.warn(
    "`storm_hf.demo` moved to `storm_hf.synthetic.demo`; this alias will be removed in the next release.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["BUNDLED_CHECKPOINT", "bundled_checkpoint", "run_demo"]
