"""What several `storm-hf` commands share: the one-line error, argument types and groups, and loading a model."""

import argparse
import math
from pathlib import Path


DTYPES = ("auto", "float32", "bfloat16", "float16")


class CommandError(Exception):
    """A failure to report as one line (exit status 1)."""


# ---------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def video_argument(text: str) -> str:
    """A video file path, or a URL the intake policy decides on when the video is read."""
    from ..processing.video_intake import url_scheme

    if url_scheme(text) is None:
        if Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a directory, not a video file")
        if not Path(text).exists():
            raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return path


def shard_size(text: str) -> str:
    """A size such as 5GB or 500MB (`max_shard_size` of `save_pretrained`)."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        convert_file_size_to_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB or 500MB, got {text!r}") from None
    return text


# ---------------------------------------------------------------- argument groups


def add_compression_arguments(parser: argparse.ArgumentParser) -> None:
    """`--temporal-pool-size`, `--spatial-pool-size`, `--temporal-sampling-stride`: overrides of the checkpoint's."""
    group = parser.add_argument_group("compression overrides (default: the checkpoint's)")
    group.add_argument(
        "--temporal-pool-size",
        type=positive_int,
        help="frames averaged into one (trained; changing it is off-distribution)",
    )
    group.add_argument(
        "--spatial-pool-size", type=positive_int, help="side of the spatial average-pooling window (trained)"
    )
    group.add_argument("--temporal-sampling-stride", type=positive_int, help="keep every n-th pooled frame (test time)")


def add_intake_arguments(parser: argparse.ArgumentParser, live: bool = False) -> None:
    """The intake policy's knobs (`storm_hf.VideoIntakePolicy`): which hosts a URL may reach, and the budgets of one
    video. A `live` command has no deadline and no frame ceiling by default (a stream may run for ever)."""
    from ..processing import VideoIntakePolicy

    defaults = VideoIntakePolicy()
    group = parser.add_argument_group("video intake (see docs/untrusted-video.md)")
    group.add_argument(
        "--trusted-host",
        action="append",
        default=[],
        metavar="HOST_OR_NETWORK",
        help="a host name, address or network (e.g. 10.0.0.0/8) a video URL may reach although it is not public "
        "(private, loopback and link-local addresses are refused otherwise); repeatable",
    )
    group.add_argument(
        "--video-deadline",
        type=positive_float,
        default=None if live else defaults.deadline_s,
        metavar="SECONDS",
        help="wall-clock limit for fetching and decoding the video (default: %(default)s)",
    )
    group.add_argument(
        "--max-video-bytes",
        type=positive_int,
        default=defaults.max_bytes,
        help="largest video fetched from a URL (default: %(default)s)",
    )
    group.add_argument(
        "--max-frame-pixels",
        type=positive_int,
        default=defaults.max_frame_pixels,
        help="largest frame, width x height (default: %(default)s)",
    )
    group.add_argument(
        "--max-decoded-frames",
        type=positive_int,
        default=None if live else defaults.max_decoded_frames,
        help="most frames taken from the video (default: %(default)s)",
    )


def intake_policy(args, **settings):
    """The `VideoIntakePolicy` of `add_intake_arguments`' options, with `settings` (e.g. `live_protocols`)."""
    from ..processing import VideoIntakePolicy

    return VideoIntakePolicy(
        trusted_hosts=tuple(args.trusted_host),
        deadline_s=args.video_deadline,
        max_bytes=args.max_video_bytes,
        max_frame_pixels=args.max_frame_pixels,
        max_decoded_frames=args.max_decoded_frames,
        **settings,
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dtype`, `--device`, `--trust-remote-code`: how `load_model_and_processor` loads the checkpoint."""
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own code (not needed for STORM checkpoints)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dtype`, `--num-frames`, `--max-shard-size` of a written checkpoint (`compose` and `convert`)."""
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the language model's)"
    )
    parser.add_argument("--num-frames", type=positive_int, help="frames the processor samples per video by default")
    parser.add_argument(
        "--max-shard-size", type=shard_size, default="5GB", help="largest safetensors shard (default: %(default)s)"
    )


# ---------------------------------------------------------------- loading


def check_model_name(name: str) -> None:
    """A name that is not a Hub repo id (`storm_hf.hub.is_hub_id`) must be an existing path."""
    from ..hub import is_hub_id

    if not Path(name).exists() and not is_hub_id(name):
        raise CommandError(f"no such checkpoint folder: {name}")


def resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=requested)
    except (RuntimeError, AssertionError) as error:
        raise CommandError(f"device {requested!r} is not usable here: {error}") from None
    return requested


def load_model_and_processor(name: str, dtype: str, device: str | None, trust_remote_code: bool, **config_overrides):
    """The model (on `resolve_device(device)`, in eval mode) and processor of checkpoint `name`; `config_overrides`
    that are not None reach both (the video processor counts placeholders with the model's pooling). The Auto
    classes know STORM: importing `storm_hf`, which this package is part of, registered it."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    check_model_name(name)
    device = resolve_device(device)
    overrides = {key: value for key, value in config_overrides.items() if value is not None}
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code, **overrides)
        model = AutoModelForImageTextToText.from_pretrained(
            name,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=trust_remote_code,
            **overrides,
        )
    except OSError as error:
        raise CommandError(f"cannot load {name!r}: {str(error).splitlines()[0]}") from None
    return model.to(device).eval(), processor
