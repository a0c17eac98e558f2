"""`storm-hf stream`: answer a prompt again and again while a video plays, from the causal model's KV cache."""

import argparse
import sys

from .common import (
    add_intake_arguments,
    add_model_arguments,
    intake_policy,
    load_model_and_processor,
    positive_float,
    positive_int,
    video_argument,
)


# The live protocols this command documents and opens (`VideoIntakePolicy.live_protocols`).
STREAM_PROTOCOLS = ("udp", "tcp", "rtmp", "srt")


def video_source(text: str) -> str:
    """A local video file, a URL (http(s), or a live udp/tcp/rtmp/srt URL), or `-` for standard input."""
    try:
        return text if text == "-" else video_argument(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (a live source is a URL such as udp://127.0.0.1:9000)") from None


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "stream",
        help="answer a prompt again and again while a video plays (causal models)",
        description="Feed a video file, a URL (http(s), or live: udp://, tcp:// (e.g. tcp://127.0.0.1:9000?listen=1), "
        "rtmp://, srt://) or standard input (`-`, with --format) to a causal STORM model as it is decoded, and print "
        "an answer to the prompt every --every seconds of video, and at its end. Frames are encoded once; each answer "
        "is generated from the language model's KV cache without re-reading the video.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id of a causal STORM model")
    parser.add_argument("--video", required=True, type=video_source, help="video file, URL, or - for standard input")
    parser.add_argument("--prompt", required=True, help="question or instruction about the video so far")
    parser.add_argument("--every", type=positive_float, required=True, help="seconds of video between answers")
    parser.add_argument(
        "--fps", type=positive_float, default=1.0, help="frames kept per second of video (default: %(default)s)"
    )
    parser.add_argument("--format", help="container format, needed for standard input and pipes (e.g. mpegts)")
    parser.add_argument("--temporal-sampling-stride", type=positive_int, help="keep every n-th pooled frame")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="default: %(default)s")
    parser.add_argument(
        "--vision-batch-size", type=positive_int, default=16, help="frames per vision-tower call (default: %(default)s)"
    )
    add_model_arguments(parser)
    add_intake_arguments(parser, live=True)
    parser.set_defaults(run=run)


def run(args) -> None:
    import io

    from ..streaming import StormStreamingSession, iter_video_frames, stream_answers

    model, processor = load_model_and_processor(args.model, args.dtype, args.device, args.trust_remote_code)
    session = StormStreamingSession(
        model,
        processor,
        vision_batch_size=args.vision_batch_size,
        temporal_sampling_stride=args.temporal_sampling_stride,
    )
    # Unbuffered standard input: PyAV gets each chunk as soon as it arrives instead of waiting for a full buffer.
    source = io.FileIO(sys.stdin.fileno(), "rb", closefd=False) if args.video == "-" else args.video
    video_processor = processor.video_processor
    resize_frames = video_processor.frame_resizer() if video_processor.do_resize else None
    policy = intake_policy(args, live_protocols=STREAM_PROTOCOLS)
    frames = iter_video_frames(source, fps=args.fps, policy=policy, resize_frames=resize_frames, format=args.format)
    answers = stream_answers(
        session, frames, args.prompt, args.every, max_new_tokens=args.max_new_tokens, do_sample=False
    )
    for seconds, num_frames, answer, latency in answers:
        print(f"[{seconds:.1f}s] {answer}", flush=True)
        print(
            f"  ({num_frames} frames, {session.num_video_tokens} video tokens cached, answered in {latency:.2f}s)",
            file=sys.stderr,
        )
