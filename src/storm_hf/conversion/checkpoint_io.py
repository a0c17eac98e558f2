"""Reading source checkpoints and mapping their keys strictly onto STORM.

A `KeyMapping` is an ordered list of rules. Each source key must match exactly one rule (the first that matches):
either it is renamed to a STORM key, or it is dropped for a stated reason. A key no rule matches, a STORM key no source
key fills (outside the keys the caller says are freshly initialised), a STORM key filled twice and a shape that differs
all raise `ConversionError` naming the keys. Pickle-based weights (`pytorch_model.bin`) are read with
`torch.load(weights_only=True)`.
"""

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..accounting import empty_model
from ..hub import is_hub_id


SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Files a checkpoint needs for conversion: configs, tokenizer and processor files, safetensors weights; pickle weights
# (`*.bin`) are fetched only for a repo without safetensors.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ConversionError(ValueError):
    """A checkpoint does not map onto STORM; the message names the keys or files at fault."""


def resolve_checkpoint(name_or_path: str | os.PathLike, subfolder: str = "") -> Path:
    """A local folder, or the snapshot of Hub repo `name_or_path` (downloaded, or from the cache when offline)."""
    path = Path(name_or_path) / subfolder
    if path.is_dir():
        return path
    if not is_hub_id(name_or_path):
        raise ConversionError(f"Checkpoint folder '{path}' does not exist.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def download(patterns):
        return Path(
            snapshot_download(
                str(name_or_path), allow_patterns=[f"{subfolder}/{p}" if subfolder else p for p in patterns]
            )
        )

    try:
        snapshot = download(CHECKPOINT_PATTERNS)
        if not any((snapshot / subfolder / name).is_file() for name in (SAFE_WEIGHTS, SAFE_INDEX)):
            snapshot = download(["*.bin"])
    except LocalEntryNotFoundError as error:
        raise ConversionError(
            f"'{name_or_path}' is neither a local folder nor in the Hugging Face cache, and the Hub cannot be reached "
            f"({error.__class__.__name__}). Download it first (`hf download {name_or_path}`) or pass a local folder."
        ) from error
    except HfHubHTTPError as error:
        raise ConversionError(f"Could not download '{name_or_path}' from the Hub: {error}") from error
    return snapshot / subfolder


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: safetensors (single or sharded) first, else pickle (`.bin`)."""
    for index_name, single_name in ((SAFE_INDEX, SAFE_WEIGHTS), (PICKLE_INDEX, PICKLE_WEIGHTS)):
        if (folder / index_name).is_file():
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise ConversionError(
        f"No weights in '{folder}': expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {PICKLE_WEIGHTS} or {PICKLE_INDEX}."
    )


@contextmanager
def open_state_dict(folder: Path) -> Iterator[dict]:
    """All tensors of a checkpoint folder as {name: tensor or lazy safetensors slice}, open while the block runs.

    Safetensors are opened lazily (nothing is read until a tensor is used); pickle files are loaded with
    `torch.load(weights_only=True)`, memory-mapped. A key present in two files raises.
    """
    tensors: dict = {}
    with ExitStack() as stack:
        for file in weight_files(folder):
            if file.suffix == ".safetensors":
                handle = stack.enter_context(safe_open(str(file), framework="pt"))
                part = {key: handle.get_slice(key) for key in handle.keys()}
            else:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(part, Mapping):
                    raise ConversionError(f"'{file}' holds a {type(part).__name__}, not a state dict of tensors.")
            duplicated = tensors.keys() & part.keys()
            if duplicated:
                raise ConversionError(f"Keys stored twice in '{folder}': {sorted(duplicated)[:10]}")
            tensors.update(part)
        yield tensors


def tensor_shape(tensor) -> tuple[int, ...]:
    """Shape of a tensor or of a lazy safetensors slice."""
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tuple(tensor.get_shape())


@dataclass(frozen=True)
class Rule:
    """Source keys matching `pattern` (a full-match regex) become `target` (a `re` template, or a function of the
    match), or are dropped when `target` is None, for `reason`."""

    pattern: str
    target: str | Callable[[re.Match], str] | None
    reason: str = ""

    def apply(self, key: str) -> tuple[bool, str | None]:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return False, None
        if self.target is None:
            return True, None
        return True, self.target(match) if callable(self.target) else match.expand(self.target)


@dataclass
class MappedKeys:
    """Result of a `KeyMapping`: STORM key -> source key, and the dropped source keys grouped by reason."""

    renamed: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def update(self, other: "MappedKeys") -> None:
        filled_twice = self.renamed.keys() & other.renamed.keys()
        if filled_twice:
            raise ConversionError(f"STORM keys filled by two sources: {sorted(filled_twice)[:10]}")
        self.renamed.update(other.renamed)
        for reason, keys in other.dropped.items():
            self.dropped.setdefault(reason, []).extend(keys)

    def describe_dropped(self) -> list[str]:
        """One line per reason: how many source tensors were dropped, an example key, and why."""
        return [
            f"dropped {len(keys)} tensor(s) such as '{sorted(keys)[0]}': {reason}"
            for reason, keys in self.dropped.items()
        ]


class KeyMapping:
    """An ordered list of `Rule`s applied to every key of a source checkpoint part (see the module docstring)."""

    def __init__(self, source_name: str, rules: Iterable[Rule]):
        self.source_name = source_name
        self.rules = list(rules)

    def apply(self, keys: Iterable[str]) -> MappedKeys:
        result, unknown = MappedKeys(), []
        for key in sorted(keys):
            for rule in self.rules:
                matched, target = rule.apply(key)
                if not matched:
                    continue
                if target is None:
                    result.dropped.setdefault(rule.reason, []).append(key)
                elif target in result.renamed:
                    raise ConversionError(
                        f"{self.source_name}: '{key}' and '{result.renamed[target]}' both map to '{target}'."
                    )
                else:
                    result.renamed[target] = key
                break
            else:
                unknown.append(key)
        if unknown:
            raise ConversionError(
                f"{self.source_name}: {len(unknown)} key(s) match no known layout, e.g. {unknown[:10]}. Nothing was "
                "converted; the checkpoint is not in a layout this converter knows."
            )
        return result


def check_complete(
    mapped: MappedKeys, tensors: Mapping, model_shapes: Mapping[str, tuple[int, ...]], fresh_keys: set[str]
) -> None:
    """Every STORM key is filled (except `fresh_keys`), none is invented, and every shape matches."""
    expected = set(model_shapes) - fresh_keys
    missing = sorted(expected - mapped.renamed.keys())
    invented = sorted(mapped.renamed.keys() - set(model_shapes))
    overwritten = sorted(mapped.renamed.keys() & fresh_keys)
    problems = []
    if missing:
        problems.append(f"{len(missing)} STORM weight(s) have no source: {missing[:10]}")
    if invented:
        sources = [mapped.renamed[key] for key in invented[:10]]
        problems.append(f"{len(invented)} mapped key(s) are not STORM weights: {invented[:10]} (from {sources})")
    if overwritten:
        problems.append(f"source weights map onto freshly initialised STORM weights: {overwritten[:10]}")
    mismatched = [
        f"{target} {model_shapes[target]} <- {source} {tensor_shape(tensors[source])}"
        for target, source in sorted(mapped.renamed.items())
        if target in model_shapes and tuple(model_shapes[target]) != tensor_shape(tensors[source])
    ]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {mismatched[:10]}")
    if problems:
        raise ConversionError("The checkpoint does not map onto the STORM model:\n  " + "\n  ".join(problems))


def model_shapes(config) -> dict[str, tuple[int, ...]]:
    """Shape of every weight of a STORM model built from `config`, without allocating it (meta device)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in empty_model(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def load_storm_model(config, state_dict: Mapping, fresh_keys: set[str], dtype: torch.dtype):
    """A STORM model with `state_dict` loaded and exactly `fresh_keys` initialised by the model's `_init_weights`."""
    from transformers.utils import logging as transformers_logging

    from ..modeling import StormForConditionalGeneration

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the loading report lists the fresh keys we asked for
    try:
        model, info = StormForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=dict(state_dict), dtype=dtype, output_loading_info=True
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = set(info["missing_keys"])
    problems = {
        "unexpectedly missing": sorted(missing - fresh_keys),
        "unexpected": sorted(info["unexpected_keys"]),
        "mismatched": sorted(map(str, info["mismatched_keys"])),
        "errors": list(info["error_msgs"]),
    }
    problems = {name: values for name, values in problems.items() if values}
    if problems:
        raise ConversionError(f"Loading the converted weights failed: {problems}")
    return model.eval()


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"Missing '{path}'.")
    return json.loads(path.read_text())


def resolve_dtype(requested: str | torch.dtype | None, source_config) -> torch.dtype:
    """`requested` (a torch dtype or its name; None or "auto": the source language model's dtype, else float32)."""
    if requested is not None and requested != "auto":
        if isinstance(requested, torch.dtype):
            return requested
        if not isinstance(getattr(torch, str(requested), None), torch.dtype):
            raise ConversionError(f"Unknown dtype {requested!r}; use float32, bfloat16, float16 or auto.")
        return getattr(torch, requested)
    dtype = getattr(source_config.get_text_config(), "dtype", None) or getattr(source_config, "dtype", None)
    return (getattr(torch, dtype) if isinstance(dtype, str) else dtype) or torch.float32
