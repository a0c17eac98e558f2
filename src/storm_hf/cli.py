"""Deprecated: the `storm-hf` command lives in `storm_hf.commands` (one module per subcommand)."""

import importlib
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

# Other names this module had -> where they are now (module, name).
_MOVED = {
    "DTYPES": ("storm_hf.commands.common", "DTYPES"),
    "CommandError": ("storm_hf.commands.common", "CommandError"),
    "positive_int": ("storm_hf.commands.common", "positive_int"),
    "positive_float": ("storm_hf.commands.common", "positive_float"),
    "existing_file": ("storm_hf.commands.common", "existing_file"),
    "existing_dir": ("storm_hf.commands.common", "existing_dir"),
    "shard_size": ("storm_hf.commands.common", "shard_size"),
    "add_compression_arguments": ("storm_hf.commands.common", "add_compression_arguments"),
    "add_output_arguments": ("storm_hf.commands.common", "add_output_arguments"),
    "check_model_name": ("storm_hf.commands.common", "check_model_name"),
    "resolve_device": ("storm_hf.commands.common", "resolve_device"),
    "load_model_and_processor": ("storm_hf.commands.common", "load_model_and_processor"),
    "parameter_counts": ("storm_hf.accounting", "parameter_counts"),
    "DEFAULT_INFO_FRAMES": ("storm_hf.commands.info", "DEFAULT_FRAMES"),
    "format_table": ("storm_hf.commands.info", "format_table"),
    "video_source": ("storm_hf.commands.stream", "video_source"),
    **{
        f"run_{name}": (f"storm_hf.commands.{name}", "run")
        for name in ("generate", "stream", "compose", "convert", "push", "info", "demo")
    },
}


def __getattr__(name: str):
    if name in _MOVED:
        module, attribute = _MOVED[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
