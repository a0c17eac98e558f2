"""The `storm-hf` command: generate, stream, compose, convert, push, info, demo.

Every subcommand has `--help`. Bad arguments end with a one-line error and exit status 2; failures while running end
with a one-line error and exit status 1 (`--traceback` shows the full trace).
"""

import argparse
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path


DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_INFO_FRAMES = (32, 64, 128, 256, 512)


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


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return path


def shard_size(text: str) -> str:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        convert_file_size_to_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB or 500MB, got {text!r}") from None
    return text


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storm-hf",
        description="STORM (token-efficient long-video language model) for Hugging Face Transformers.",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    generate = commands.add_parser(
        "generate",
        help="answer a prompt about a video",
        description="Answer a prompt about a video, streaming the answer.",
    )
    generate.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    generate.add_argument("--video", required=True, type=existing_file, help="video file (mp4, webm, mkv, ...)")
    generate.add_argument("--prompt", required=True, help="question or instruction about the video")
    sampling = generate.add_mutually_exclusive_group()
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
    add_compression_arguments(generate)
    generate.add_argument("--max-new-tokens", type=positive_int, default=128, help="default: %(default)s")
    generate.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the checkpoint's)")
    generate.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    generate.add_argument(
        "--encode-batch-size", type=positive_int, default=16, help="frames per vision-tower call (default: %(default)s)"
    )
    generate.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own code (not needed for STORM checkpoints)",
    )
    generate.add_argument("--no-progress", action="store_true", help="hide the decoding and encoding progress bars")

    compose = commands.add_parser(
        "compose",
        help="build a STORM checkpoint from SigLIP + Qwen2/Qwen2-VL",
        description="Build a STORM checkpoint from a pretrained SigLIP vision checkpoint (SiglipVisionModel, "
        "SiglipModel or PaliGemma) and a Qwen2 or Qwen2-VL language model (local folders or Hub ids). "
        "The temporal projector is freshly initialised: the paper's starting point for alignment.",
    )
    compose.add_argument("--vision", required=True, help="SigLIP / PaliGemma checkpoint folder or Hub id")
    compose.add_argument("--language", required=True, help="Qwen2 / Qwen2-VL checkpoint folder or Hub id")
    compose.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the language model's)")
    compose.add_argument("--output", required=True, type=Path, help="folder to write the checkpoint to")
    compose.add_argument("--mamba-num-layers", type=int, help="Mamba layers in the temporal projector (default: 2)")
    compose.add_argument("--mamba-state-size", type=positive_int, help="SSM state size (default: 16)")
    compose.add_argument(
        "--vision-feature-layer", type=int, help="vision hidden state fed to the projector (default: -2)"
    )
    compose.add_argument("--temporal-pool-size", type=positive_int, help="frames averaged into one (default: 4)")
    compose.add_argument(
        "--spatial-pool-size", type=positive_int, help="side of the spatial pooling window (default: 1)"
    )
    add_output_arguments(compose)

    convert = commands.add_parser(
        "convert",
        help="convert a VILA/NVILA-style STORM checkpoint",
        description="Convert a VILA/NVILA-style STORM training checkpoint (folders llm/, vision_tower/, "
        "mm_projector/) to one Hugging Face checkpoint. "
        "The key mapping is strict: unknown or missing keys fail with their names.",
    )
    convert.add_argument("checkpoint", type=existing_dir, help="the VILA checkpoint folder")
    convert.add_argument("--output", required=True, type=Path, help="folder to write the checkpoint to")
    convert.add_argument(
        "--temporal-sampling-stride", type=positive_int, help="default test-time temporal sampling stride"
    )
    add_output_arguments(convert)

    push = commands.add_parser(
        "push",
        help="upload a checkpoint folder to the Hub",
        description="Upload a saved STORM checkpoint folder to the Hugging Face Hub in one commit, after checking "
        "that it loads without storm_hf (config auto_map + code, processor + chat template); "
        "writes a model card if it has none.",
    )
    push.add_argument("folder", type=existing_dir, help="checkpoint folder (from compose, convert or save_pretrained)")
    push.add_argument("repo_id", help="Hub repository, e.g. my-org/storm-7b")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--commit-message", default="Upload STORM checkpoint")
    push.add_argument("--token", help="Hub token (default: the logged-in one)")

    info = commands.add_parser(
        "info",
        help="frames -> tokens -> estimated LLM memory, as a table",
        description="For a STORM config, show how many LLM tokens videos of various lengths become, with and without "
        "compression, and the estimated memory of the language model (weights + KV cache + prefill activations).",
    )
    info.add_argument(
        "--model", help="checkpoint folder or Hub id (only config.json is read; default: the paper's 7B model)"
    )
    info.add_argument(
        "--frames",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_INFO_FRAMES),
        help="frame counts (default: %(default)s)",
    )
    add_compression_arguments(info)
    info.add_argument(
        "--text-tokens", type=int, default=64, help="prompt text tokens besides the video (default: %(default)s)"
    )
    info.add_argument(
        "--dtype", choices=DTYPES[1:], default="bfloat16", help="dtype of weights and cache (default: %(default)s)"
    )

    demo = commands.add_parser(
        "demo",
        help="answer a question about a freshly rendered clip with the bundled model",
        description="Render a new clip of the synthetic temporal task, answer a question about it with the small STORM "
        "checkpoint shipped in the package, and show the tokens used and the latency with and without compression.",
    )
    demo.add_argument("--seed", type=int, help="seed of the clip (default: a new one each run)")
    demo.add_argument("--question-type", help="question type of the clip (default: a random order-dependent one)")
    demo.add_argument(
        "--eval-clips",
        type=int,
        default=100,
        help="fresh clips to measure accuracy on; 0 skips it (default: %(default)s)",
    )
    demo.add_argument("--checkpoint", type=existing_dir, help="use this checkpoint instead of the bundled one")
    add_stream_parser(commands)
    return parser


def add_compression_arguments(parser: argparse.ArgumentParser) -> None:
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


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the language model's)"
    )
    parser.add_argument("--num-frames", type=positive_int, help="frames the processor samples per video by default")
    parser.add_argument(
        "--max-shard-size", type=shard_size, default="5GB", help="largest safetensors shard (default: %(default)s)"
    )


# ---------------------------------------------------------------- generate


class DecodingProgress:
    """A progress bar over the frames PyAV decodes, opened once the frames to sample are known (`start`)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def start(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="decoding frames", unit="frame", disable=not self.enabled, file=sys.stderr)

    @contextmanager
    def counting(self):
        """Counts each frame the reader converts to RGB (one per sampled frame)."""
        from .processing import video_decoding

        original = getattr(video_decoding, "_to_rgb", None)
        if original is not None:

            def counted(frame):
                if self.bar is not None:
                    self.bar.update(1)
                return original(frame)

            video_decoding._to_rgb = counted
        try:
            yield self
        finally:
            if original is not None:
                video_decoding._to_rgb = original
            if self.bar is not None:
                self.bar.close()


class EncodingProgress:
    """A progress bar over the frames the vision tower encodes: the model's `progress_callback(done, total)`."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=total, desc="encoding frames", unit="frame", disable=not self.enabled, file=sys.stderr
            )
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=requested)
    except (RuntimeError, AssertionError) as error:
        raise CommandError(f"device {requested!r} is not usable here: {error}") from None
    return requested


def check_model_name(name: str) -> None:
    """A name that can only be a local path must exist (anything else is tried as a Hub id)."""
    if not Path(name).exists() and (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    ):
        raise CommandError(f"no such checkpoint folder: {name}")


def load_model_and_processor(name: str, dtype: str, device: str, trust_remote_code: bool, **config_overrides):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .conversion.processor import ensure_processing_registered

    ensure_processing_registered()
    check_model_name(name)
    overrides = {key: value for key, value in config_overrides.items() if value is not None}
    try:
        # The pooling overrides reach the video processor, which counts the placeholders with the model's pooling.
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


def run_generate(args) -> None:
    import torch

    from .processing import read_video

    device = resolve_device(args.device)
    model, processor = load_model_and_processor(
        args.model,
        args.dtype,
        device,
        args.trust_remote_code,
        temporal_pool_size=args.temporal_pool_size,
        spatial_pool_size=args.spatial_pool_size,
    )
    video_processor = processor.video_processor
    num_frames, fps = args.num_frames, args.fps
    if num_frames is None and fps is None and args.max_visual_tokens is None:
        num_frames, fps = video_processor.num_frames, video_processor.fps
    stride = args.temporal_sampling_stride or video_processor.temporal_sampling_stride or 1

    started = time.perf_counter()
    with DecodingProgress(not args.no_progress).counting() as progress:

        def sample(metadata, **kwargs):
            nonlocal stride
            if args.max_visual_tokens is not None:
                plan = video_processor.plan_frames(metadata, args.max_visual_tokens, args.temporal_sampling_stride)
                stride = plan.temporal_sampling_stride
                indices = video_processor.sample_frames(metadata, num_frames=plan.num_frames)
            else:
                indices = video_processor.sample_frames(metadata, num_frames=num_frames, fps=fps)
            progress.start(len(set(indices.tolist())))
            return indices

        frames, metadata = read_video(args.video, sample)
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
    ).to(device)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    num_video_tokens = int((inputs["input_ids"] == processor.video_token_id).sum())

    streamer = _TimedStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        generation_start = time.perf_counter()
        output = model.generate(
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            streamer=streamer,
            vision_batch_size=args.encode_batch_size,
            progress_callback=EncodingProgress(not args.no_progress),
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


class _TimedStreamer:
    """`TextStreamer` that also records when the first new token arrives (encode + prefill latency)."""

    def __new__(cls, tokenizer, **kwargs):
        from transformers import TextStreamer

        class Timed(TextStreamer):
            first_token_time = None
            _prompt_seen = False

            def put(self, value):
                if self._prompt_seen and self.first_token_time is None:
                    self.first_token_time = time.perf_counter()
                self._prompt_seen = True
                super().put(value)

        return Timed(tokenizer, **kwargs)


# ---------------------------------------------------------------- compose, convert, push


def run_compose(args) -> None:
    from .conversion import compose_storm

    overrides = {
        name: getattr(args, name)
        for name in (
            "mamba_num_layers",
            "mamba_state_size",
            "vision_feature_layer",
            "temporal_pool_size",
            "spatial_pool_size",
        )
        if getattr(args, name) is not None
    }
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


def run_convert(args) -> None:
    from .conversion import convert_vila_checkpoint

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


def run_push(args) -> None:
    from .hub import push_folder

    commit = push_folder(
        args.folder,
        args.repo_id,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.folder} to {getattr(commit, 'commit_url', args.repo_id)}")


# ---------------------------------------------------------------- info


def _bytes(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size:.0f} B"


def parameter_counts(config) -> dict[str, int]:
    """Parameters of each part of a STORM model built from `config` (on the meta device: nothing is allocated)."""
    import torch

    from .modeling import StormForConditionalGeneration

    with torch.device("meta"):
        model = StormForConditionalGeneration(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    language = count(model.model.language_model) + (0 if config.tie_word_embeddings else model.lm_head.weight.numel())
    return {
        "vision tower": count(model.model.vision_tower),
        "temporal projector": count(model.model.temporal_projector),
        "language model": language,
    }


def info_table(config, frames, text_tokens: int, dtype_bytes: int, stride: int) -> tuple[list[str], list[list[str]]]:
    """Rows of frames -> tokens -> estimated LLM memory, without compression and with the config's compression."""
    from .accounting import (
        compression_label,
        kv_cache_bytes_per_token,
        prefill_activation_bytes_per_token,
        video_tokens,
    )

    kv_per_token = kv_cache_bytes_per_token(config, dtype_bytes)
    activations_per_token = prefill_activation_bytes_per_token(config, dtype_bytes)
    weights = parameter_counts(config)["language model"] * dtype_bytes
    no_compression = dict(temporal_pool_size=1, spatial_pool_size=1, temporal_sampling_stride=1)
    compression = dict(
        temporal_pool_size=config.temporal_pool_size,
        spatial_pool_size=config.spatial_pool_size,
        temporal_sampling_stride=stride,
    )
    name = compression_label(**compression)
    header = ["frames", "compression", "visual tokens", "% of full", "KV cache", "prefill activations", "LLM memory"]
    rows = []
    for num_frames in frames:
        full = video_tokens(config, num_frames, **no_compression)
        variants = [("none", full)]
        if name != "none":
            variants.append((name, video_tokens(config, num_frames, **compression)))
        for label, tokens in variants:
            total_tokens = tokens + text_tokens
            kv, activations = kv_per_token * total_tokens, activations_per_token * total_tokens
            rows.append(
                [
                    str(num_frames),
                    label,
                    f"{tokens:,}",
                    f"{100 * tokens / full:.1f}%",
                    _bytes(kv),
                    _bytes(activations),
                    _bytes(weights + kv + activations),
                ]
            )
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i != 1 else cell.ljust(width) for i, (cell, width) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def run_info(args) -> None:
    import torch

    from .modeling import StormConfig

    overrides = {
        name: getattr(args, name) for name in ("temporal_pool_size", "spatial_pool_size") if getattr(args, name)
    }
    if args.model:
        check_model_name(args.model)
        try:
            config = StormConfig.from_pretrained(args.model, **overrides)
        except OSError as error:
            raise CommandError(f"cannot read the config of {args.model!r}: {str(error).splitlines()[0]}") from None
    else:
        config = StormConfig(**overrides)
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
        f"{text.num_key_value_heads} KV heads) = {_bytes(counts['language model'] * dtype_bytes)} in {args.dtype}"
    )
    header, rows = info_table(config, args.frames, args.text_tokens, dtype_bytes, stride)
    print(format_table(header, rows))
    print(
        "LLM memory = LLM weights + KV cache + prefill activations for visual tokens + "
        f"{args.text_tokens} text tokens, in {args.dtype}; "
        "vision tower and projector weights and framework overhead not included. Token counts come "
        "from storm_hf.accounting."
    )


# ---------------------------------------------------------------- stream


def video_source(text: str) -> str:
    """A local video file, a URL PyAV can open (scheme://...), or `-` for standard input."""
    if text != "-" and "://" not in text and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text} (a live source is a URL such as udp://127.0.0.1:9000)")
    return text


def add_stream_parser(commands) -> None:
    stream = commands.add_parser(
        "stream",
        help="answer a prompt again and again while a video plays (causal models)",
        description="Feed a video file, a URL (e.g. tcp://127.0.0.1:9000?listen=1) or standard input (`-`, with "
        "--format) to a causal STORM model as it is decoded, and print an answer to the prompt every --every seconds "
        "of video, and at its end. Frames are encoded once; each answer is generated from the language model's KV "
        "cache without re-reading the video.",
    )
    stream.add_argument("--model", required=True, help="checkpoint folder or Hub id of a causal STORM model")
    stream.add_argument("--video", required=True, type=video_source, help="video file, URL, or - for standard input")
    stream.add_argument("--prompt", required=True, help="question or instruction about the video so far")
    stream.add_argument("--every", type=positive_float, required=True, help="seconds of video between answers")
    stream.add_argument(
        "--fps", type=positive_float, default=1.0, help="frames kept per second of video (default: %(default)s)"
    )
    stream.add_argument("--format", help="container format, needed for standard input and pipes (e.g. mpegts)")
    stream.add_argument("--temporal-sampling-stride", type=positive_int, help="keep every n-th pooled frame")
    stream.add_argument("--max-new-tokens", type=positive_int, default=64, help="default: %(default)s")
    stream.add_argument(
        "--vision-batch-size", type=positive_int, default=16, help="frames per vision-tower call (default: %(default)s)"
    )
    stream.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the checkpoint's)")
    stream.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    stream.add_argument(
        "--trust-remote-code", action="store_true", help="run the checkpoint's own code (not needed for STORM)"
    )


def run_stream(args) -> None:
    import io

    from .streaming import StormStreamingSession, iter_video_frames, stream_answers

    model, processor = load_model_and_processor(
        args.model, args.dtype, resolve_device(args.device), args.trust_remote_code
    )
    session = StormStreamingSession(
        model,
        processor,
        vision_batch_size=args.vision_batch_size,
        temporal_sampling_stride=args.temporal_sampling_stride,
    )
    # Unbuffered standard input: PyAV gets each chunk as soon as it arrives instead of waiting for a full buffer.
    source = io.FileIO(sys.stdin.fileno(), "rb", closefd=False) if args.video == "-" else args.video
    frames = iter_video_frames(source, fps=args.fps, format=args.format)
    answers = stream_answers(
        session, frames, args.prompt, args.every, max_new_tokens=args.max_new_tokens, do_sample=False
    )
    for seconds, num_frames, answer, latency in answers:
        print(f"[{seconds:.1f}s] {answer}", flush=True)
        print(
            f"  ({num_frames} frames, {session.num_video_tokens} video tokens cached, answered in {latency:.2f}s)",
            file=sys.stderr,
        )


# ---------------------------------------------------------------- demo


def run_demo(args) -> None:
    from .synthetic.demo import run_demo as demo

    demo(seed=args.seed, question_type=args.question_type, eval_clips=args.eval_clips, checkpoint=args.checkpoint)


COMMANDS = {
    "generate": run_generate,
    "compose": run_compose,
    "convert": run_convert,
    "push": run_push,
    "info": run_info,
    "demo": run_demo,
    "stream": run_stream,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line; --traceback for the rest
        if args.traceback or os.environ.get("STORM_HF_TRACEBACK"):
            raise
        message = str(error).strip() or type(error).__name__
        print(f"storm-hf {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
