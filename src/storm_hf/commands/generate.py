"""`storm-hf generate`: answer a prompt about a video file, streaming the answer, with decode and encode progress."""

import sys
import time

from transformers import TextStreamer

from .common import (
    add_compression_arguments,
    add_intake_arguments,
    add_model_arguments,
    intake_policy,
    load_model_and_processor,
    positive_float,
    positive_int,
    video_argument,
)


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "generate",
        help="answer a prompt about a video",
        description="Answer a prompt about a video, streaming the answer.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument(
        "--video", required=True, type=video_argument, help="video file (mp4, webm, mkv, ...) or http(s) URL"
    )
    parser.add_argument("--prompt", required=True, help="question or instruction about the video")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--num-frames", type=positive_int, help="frames sampled uniformly (default: the processor's)")
    sampling.add_argument(
        "--fps", type=positive_float, help="frames sampled per second of video instead of --num-frames"
    )
    sampling.add_argument(
        "--max-visual-tokens",
        type=positive_int,
        help="LLM token budget of the video: the processor picks the frames and the temporal-sampling stride "
        "(instead of --num-frames / --fps)",
    )
    add_compression_arguments(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="default: %(default)s")
    parser.add_argument(
        "--encode-batch-size", type=positive_int, default=16, help="frames per vision-tower call (default: %(default)s)"
    )
    add_model_arguments(parser)
    add_intake_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the decoding and encoding progress bars")
    parser.set_defaults(run=run)


class ProgressBar:
    """A `progress_callback(done, total)` that draws a tqdm bar on standard error, opened at the first call and closed
    when `done` reaches `total`."""

    def __init__(self, description: str, enabled: bool = True):
        self.description, self.enabled = description, enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit="frame", disable=not self.enabled, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


class TimedTextStreamer(TextStreamer):
    """`TextStreamer` that prints only the new tokens and records in `first_token_time` (`time.perf_counter()`) when
    `generate` hands it the first of them: the encode + prefill latency."""

    def __init__(self, tokenizer, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt=True, **decode_kwargs)
        self.first_token_time = None
        self.prompt_received = False

    def put(self, value) -> None:
        if self.prompt_received and self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.prompt_received = True
        super().put(value)


def read_sampled_frames(
    video_processor,
    path,
    num_frames: int | None,
    fps: float | None,
    max_visual_tokens: int | None,
    temporal_sampling_stride: int | None,
    progress_callback,
    policy,
):
    """Decode, under the intake `policy`, the frames of `path` that `num_frames`, `fps` or `max_visual_tokens` select
    (the video processor's defaults when all are None), as the video processor decodes them (each frame resized as
    it is decoded), reporting to `progress_callback(done, total)`. Returns the frames, their metadata and
    the temporal-sampling stride to count their tokens with (the budget's when `max_visual_tokens` is set)."""
    from ..processing import read_video

    if num_frames is None and fps is None and max_visual_tokens is None:
        num_frames, fps = video_processor.num_frames, video_processor.fps
    plans = []

    def sample(metadata, **kwargs):
        if max_visual_tokens is None:
            return video_processor.sample_frames(metadata, num_frames=num_frames, fps=fps)
        plans.append(video_processor.plan_frames(metadata, max_visual_tokens, temporal_sampling_stride))
        return video_processor.sample_frames(metadata, num_frames=plans[-1].num_frames)

    resize_frames = video_processor.frame_resizer() if video_processor.do_resize else None
    frames, metadata = read_video(
        path, sample, policy=policy, resize_frames=resize_frames, progress_callback=progress_callback
    )
    if plans:
        return frames, metadata, plans[-1].temporal_sampling_stride
    return frames, metadata, temporal_sampling_stride or video_processor.temporal_sampling_stride or 1


def run(args) -> None:
    import torch

    model, processor = load_model_and_processor(
        args.model,
        args.dtype,
        args.device,
        args.trust_remote_code,
        temporal_pool_size=args.temporal_pool_size,
        spatial_pool_size=args.spatial_pool_size,
    )
    started = time.perf_counter()
    frames, metadata, stride = read_sampled_frames(
        processor.video_processor,
        args.video,
        args.num_frames,
        args.fps,
        args.max_visual_tokens,
        args.temporal_sampling_stride,
        progress_callback=ProgressBar("decoding frames", enabled=not args.no_progress),
        policy=intake_policy(args),
    )
    decoded = time.perf_counter()

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": args.prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=text,
        videos=[frames],
        video_metadata=[metadata],
        do_sample_frames=False,
        temporal_sampling_stride=stride,
        max_visual_tokens=args.max_visual_tokens,
        return_tensors="pt",
    ).to(model.device)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    num_video_tokens = int((inputs["input_ids"] == processor.video_token_id).sum())

    streamer = TimedTextStreamer(processor.tokenizer, skip_special_tokens=True)
    with torch.inference_mode():
        generation_start = time.perf_counter()
        output = model.generate(
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            streamer=streamer,
            vision_batch_size=args.encode_batch_size,
            progress_callback=ProgressBar("encoding frames", enabled=not args.no_progress),
        )
    finished = time.perf_counter()
    new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    first = (streamer.first_token_time or finished) - generation_start
    print(
        f"\n[{len(frames)} frames -> {num_video_tokens} visual tokens "
        f"(temporal pool {model.config.temporal_pool_size}, spatial pool {model.config.spatial_pool_size}, "
        f"sampling stride {stride}); prompt {inputs['input_ids'].shape[1]} tokens; "
        f"decode {decoded - started:.2f}s, encode + prefill {first:.2f}s, {new_tokens} new tokens in "
        f"{finished - generation_start:.2f}s]",
        file=sys.stderr,
    )
