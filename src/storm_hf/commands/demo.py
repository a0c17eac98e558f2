"""`storm-hf demo`: answer a question about a freshly rendered clip with the small model shipped in the package."""

from .common import existing_dir


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="answer a question about a freshly rendered clip with the bundled model",
        description="Render a new clip of the synthetic temporal task, answer a question of a type the small STORM "
        "checkpoint shipped in the package learned, show the visual tokens with and without compression, time reading "
        "the file apart from the model, and measure what compression saves where the token count decides the time.",
    )
    parser.add_argument("--seed", type=int, help="seed of the clip (default: a new one each run)")
    parser.add_argument("--question-type", help="question type of the clip (default: a random order-dependent one)")
    parser.add_argument(
        "--eval-clips",
        type=int,
        default=100,
        help="fresh clips to measure accuracy on; 0 skips it (default: %(default)s)",
    )
    parser.add_argument("--checkpoint", type=existing_dir, help="use this checkpoint instead of the bundled one")
    parser.add_argument(
        "--prefill-frames",
        type=int,
        help="frames (at the paper's 448 px) whose visual tokens a Qwen2-0.5B-shaped layer prefills, with and without "
        "compression; 0 skips it (default: 4)",
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    from ..synthetic.demo import run_demo

    run_demo(
        seed=args.seed,
        question_type=args.question_type,
        eval_clips=args.eval_clips,
        checkpoint=args.checkpoint,
        prefill_frames=args.prefill_frames,
    )
