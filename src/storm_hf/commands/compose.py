"""`storm-hf compose`: a STORM checkpoint from a pretrained SigLIP and a decoder-only (or Qwen2-VL) language model."""

from pathlib import Path

from .common import add_output_arguments, positive_int


CONFIG_OVERRIDES = (
    "mamba_num_layers",
    "mamba_state_size",
    "vision_feature_layer",
    "temporal_pool_size",
    "spatial_pool_size",
)


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "compose",
        help="build a STORM checkpoint from SigLIP + a decoder-only language model",
        description="Build a STORM checkpoint from a pretrained SigLIP vision checkpoint (SiglipVisionModel, "
        "SiglipModel or PaliGemma) and a decoder-only language model (Llama, Mistral, Qwen2, Qwen2.5, Qwen3, ...) or "
        "Qwen2-VL's (local folders or Hub ids). "
        "The temporal projector is freshly initialised: the paper's starting point for alignment.",
    )
    parser.add_argument("--vision", required=True, help="SigLIP / PaliGemma checkpoint folder or Hub id")
    parser.add_argument(
        "--language", required=True, help="causal LM (e.g. Llama, Qwen3) or Qwen2-VL checkpoint folder or Hub id"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the language model's)")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the checkpoint to")
    parser.add_argument("--mamba-num-layers", type=int, help="Mamba layers in the temporal projector (default: 2)")
    parser.add_argument("--mamba-state-size", type=positive_int, help="SSM state size (default: 16)")
    parser.add_argument(
        "--vision-feature-layer", type=int, help="vision hidden state fed to the projector (default: -2)"
    )
    parser.add_argument("--temporal-pool-size", type=positive_int, help="frames averaged into one (default: 4)")
    parser.add_argument(
        "--spatial-pool-size", type=positive_int, help="side of the spatial pooling window (default: 1)"
    )
    add_output_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..conversion import compose_storm

    overrides = {name: getattr(args, name) for name in CONFIG_OVERRIDES if getattr(args, name) is not None}
    _, _, report = compose_storm(
        args.vision,
        args.language,
        args.output,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        num_frames=args.num_frames or 32,
        max_shard_size=args.max_shard_size,
        **overrides,
    )
    print(report)
    print(f"STORM checkpoint written to {args.output}")
