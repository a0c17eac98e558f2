"""`storm-hf convert`: one Hugging Face checkpoint from a VILA/NVILA-style STORM training checkpoint."""

from pathlib import Path

from .common import add_output_arguments, existing_dir, positive_int


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a VILA/NVILA-style STORM checkpoint",
        description="Convert a VILA/NVILA-style STORM training checkpoint (folders llm/, vision_tower/, "
        "mm_projector/) to one Hugging Face checkpoint. "
        "The key mapping is strict: unknown or missing keys fail with their names.",
    )
    parser.add_argument("checkpoint", type=existing_dir, help="the VILA checkpoint folder")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the checkpoint to")
    parser.add_argument(
        "--temporal-sampling-stride", type=positive_int, help="default test-time temporal sampling stride"
    )
    add_output_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..conversion import convert_vila_checkpoint

    overrides = {"temporal_sampling_stride": args.temporal_sampling_stride} if args.temporal_sampling_stride else {}
    _, _, report = convert_vila_checkpoint(
        args.checkpoint,
        args.output,
        dtype=args.dtype,
        num_frames=args.num_frames,
        max_shard_size=args.max_shard_size,
        **overrides,
    )
    print(report)
    print(f"STORM checkpoint written to {args.output}")
