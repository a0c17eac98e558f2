"""`storm-hf info`: frames -> LLM tokens -> estimated language-model memory of a STORM config, as a table.

The numbers come from `storm_hf.accounting`; this module only lays them out.
"""

from .common import DTYPES, CommandError, add_compression_arguments, check_model_name, positive_int


DEFAULT_FRAMES = (32, 64, 128, 256, 512)
COLUMNS = ("frames", "compression", "visual tokens", "% of full", "KV cache", "prefill activations", "LLM memory")


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "info",
        help="frames -> tokens -> estimated LLM memory, as a table",
        description="For a STORM config, show how many LLM tokens videos of various lengths become, with and without "
        "compression, and the estimated memory of the language model (weights + KV cache + prefill activations).",
    )
    parser.add_argument(
        "--model", help="checkpoint folder or Hub id (only config.json is read; default: the paper's 7B model)"
    )
    parser.add_argument(
        "--frames",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_FRAMES),
        help="frame counts (default: %(default)s)",
    )
    add_compression_arguments(parser)
    parser.add_argument(
        "--text-tokens", type=int, default=64, help="prompt text tokens besides the video (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype", choices=DTYPES[1:], default="bfloat16", help="dtype of weights and cache (default: %(default)s)"
    )
    parser.set_defaults(run=run)


def format_bytes(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size:.0f} B"


def info_rows(
    config, frames, text_tokens: int, dtype_bytes: int, stride: int, language_model_parameters: int
) -> list[list[str]]:
    """A row of `COLUMNS` per frame count without compression, and one with the config's pooling and `stride`."""
    from ..accounting import NO_COMPRESSION, compression_label, compression_of, language_model_memory, video_tokens

    compression = compression_of(config, stride)
    name = compression_label(**compression)
    rows = []
    for num_frames in frames:
        full = video_tokens(config, num_frames, **NO_COMPRESSION)
        variants = [("none", full)]
        if name != "none":
            variants.append((name, video_tokens(config, num_frames, **compression)))
        for label, tokens in variants:
            memory = language_model_memory(config, tokens + text_tokens, dtype_bytes, language_model_parameters)
            rows.append(
                [
                    str(num_frames),
                    label,
                    f"{tokens:,}",
                    f"{100 * tokens / full:.1f}%",
                    format_bytes(memory.kv_cache),
                    format_bytes(memory.prefill_activations),
                    format_bytes(memory.total),
                ]
            )
    return rows


def format_table(header, rows: list[list[str]]) -> str:
    """Columns right-aligned (the second, a label, left-aligned), two spaces apart, under a dashed rule."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(
            cell.rjust(width) if i != 1 else cell.ljust(width) for i, (cell, width) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def load_config(name: str | None, **overrides):
    """The `StormConfig` of checkpoint `name` (the paper's 7B model when None), with `overrides` that are set."""
    from ..modeling import StormConfig

    overrides = {key: value for key, value in overrides.items() if value}
    if name is None:
        return StormConfig(**overrides)
    check_model_name(name)
    try:
        return StormConfig.from_pretrained(name, **overrides)
    except OSError as error:
        raise CommandError(f"cannot read the config of {name!r}: {str(error).splitlines()[0]}") from None


def run(args) -> None:
    import torch

    from ..accounting import parameter_counts

    config = load_config(
        args.model, temporal_pool_size=args.temporal_pool_size, spatial_pool_size=args.spatial_pool_size
    )
    if args.text_tokens < 0:
        raise CommandError(f"--text-tokens must be >= 0, got {args.text_tokens}")
    dtype_bytes = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    stride = args.temporal_sampling_stride or config.temporal_sampling_stride
    counts = parameter_counts(config)
    text, vision = config.text_config, config.vision_config
    print(f"model: {args.model or 'StormConfig() (the paper 7B model)'}")
    print(
        f"  vision tower {counts['vision tower'] / 1e6:,.0f}M params "
        f"({vision.image_size}px, patch {vision.patch_size}), "
        f"temporal projector {counts['temporal projector'] / 1e6:,.0f}M ({config.mamba_num_layers} Mamba layers), "
        f"language model {counts['language model'] / 1e9:.2f}B "
        f"({text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"{text.num_key_value_heads} KV heads) = {format_bytes(counts['language model'] * dtype_bytes)} in {args.dtype}"
    )
    rows = info_rows(config, args.frames, args.text_tokens, dtype_bytes, stride, counts["language model"])
    print(format_table(COLUMNS, rows))
    print(
        "LLM memory = LLM weights + KV cache + prefill activations for visual tokens + "
        f"{args.text_tokens} text tokens, in {args.dtype}; "
        "vision tower and projector weights and framework overhead not included. Token counts come "
        "from storm_hf.accounting."
    )
