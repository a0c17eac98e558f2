"""Streaming benchmark: per-question latency and memory of a live-video session as the stream grows, against
re-encoding and re-prefilling the whole video for every question (what every other video-LLM integration does).

One random mid-size causal STORM model (`bench_compression.bench_config` with `mamba_bidirectional=False`: a
SigLIP-base-like vision tower, two causal Mamba layers, a Qwen2-0.5B-like language model; temporal pooling 4) watches
a synthetic video at `--fps` frames per second, fed `--chunk-seconds` of video at a time (one vision-tower micro-batch:
a frame per call would re-read all vision weights for every frame). One `StormStreamingSession` per stream length of
`--minutes` takes the same chunks until it has its length. Then the same question is answered:

  session    `session.generate(question)`: the question is prefilled on top of the cached video, then greedy
             decoding; `--repeats` rounds that ask every session once (side by side in time: the load of a shared
             machine drifts over a run), minimum reported; the cache is cropped back after each answer
  baseline   `processor(text, videos=[all frames so far])` + `model.generate(...)`: resize/normalise, vision tower,
             projector, compression and prefill of the whole video, then the same greedy decoding

Both generate `--new-tokens` tokens (no EOS: random weights); in float32 they must produce the same tokens (checked and
reported). Also reported: the longest session's ingest time per second of video (what `add_frames` costs as the video
plays), the KV-cache bytes of the cached tokens (and of the buffers: up to 1.5x the longest the cache has been, video +
question + answer), and the peak resident memory above the pre-question level of each answer (VmHWM, reset through
/proc/self/clear_refs). The KV-cache bytes per hour of video at the paper's 7B scale are computed from `StormConfig()`
(no model is built): tokens per hour x 2 (keys, values) x layers x KV heads x head dim x 2 bytes.

    python benchmarks/bench_streaming.py                       # 1, 5, 30 minutes at 1 fps, 64 px frames, 1 thread
    python benchmarks/bench_streaming.py --minutes 0.5 1 --repeats 1 --out /tmp/streaming.md   # a quick check

The frames are 64x64 (patch 16: 4x4 patches, 2x2 tokens per frame after the pixel-shuffle, 1 LLM token per second of
video after pooling) instead of bench_compression's 256x256: 30 minutes of video re-encoded by the baseline must fit in
minutes on a shared 2-core CPU. Needs matplotlib for the plot (`pip install matplotlib`).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PATCH_SIZE, mid_size_config, moving_bar_frame, peak_rss_above, start_run, write_results

from storm_hf import StormConfig, StormForConditionalGeneration
from storm_hf.accounting import head_dim, kv_cache_bytes_per_token, video_tokens
from storm_hf.streaming import StormStreamingSession
from storm_hf.synthetic import build_task_processor


QUESTION = "What has happened in the video so far?"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 30], help="stream lengths to ask at")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second of video")
    parser.add_argument("--image-size", type=int, default=64, help="frame side in pixels (patch 16)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per answer")
    parser.add_argument("--repeats", type=int, default=3, help="session answers per length (minimum reported)")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="baseline answers per length")
    parser.add_argument("--vision-batch-size", type=int, default=16)
    parser.add_argument(
        "--chunk-seconds", type=float, default=16, help="seconds of video per add_frames call (a live source's chunk)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a shared CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "streaming.md")
    args = parser.parse_args()
    return args


def tokens_per_hour(config: StormConfig, fps: float) -> int:
    """Video tokens the LLM caches per hour of video at `fps` (the config's pooling, no sampling)."""
    return video_tokens(config, round(3600 * fps), temporal_sampling_stride=1)


def paper_scale_memory(fps: float) -> dict:
    config = StormConfig()  # the paper's 7B model: SigLIP 448 px, Qwen2-7B
    per_token = kv_cache_bytes_per_token(config, dtype_bytes=2)  # bf16
    per_hour = tokens_per_hour(config, fps)
    return {
        "tokens_per_hour": per_hour,
        "kv_bytes_per_token": per_token,
        "kv_bytes_per_hour": per_hour * per_token,
        "tokens_per_frame": video_tokens(config, 1, temporal_pool_size=1),
        "temporal_pool_size": config.temporal_pool_size,
        "layers": config.text_config.num_hidden_layers,
        "kv_heads": config.text_config.num_key_value_heads,
        "head_dim": head_dim(config.text_config),
    }


def baseline_answer(model, processor, frames: list[np.ndarray], new_tokens: int) -> list[int]:
    """What every peer does: process, encode and prefill the whole video, then decode."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, videos=[np.stack(frames)], do_sample_frames=False, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def session_answer(session: StormStreamingSession, new_tokens: int) -> list[int]:
    output = session.generate(QUESTION, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return output[0, -new_tokens:].tolist()


def run_benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    config = mid_size_config(args.image_size, mamba_bidirectional=False, temporal_pool_size=4)
    processor = build_task_processor(
        size=args.image_size,
        patch_size=config.vision_config.patch_size,
        downsample_ratio=config.downsample_ratio,
        temporal_pool_size=config.temporal_pool_size,
    )
    config.video_token_id, config.image_token_id = processor.video_token_id, processor.image_token_id
    torch.manual_seed(0)
    model = StormForConditionalGeneration(config).eval()
    targets = sorted({round(minutes * 60 * args.fps) for minutes in args.minutes})
    # One session per stream length, fed the same chunks, so that their answers can be timed side by side at the end
    # (the load of a shared machine drifts over a run); the longest session's ingest is timed.
    sessions = {
        target: StormStreamingSession(model, processor, vision_batch_size=args.vision_batch_size) for target in targets
    }
    longest = sessions[targets[-1]]
    frames_per_call = max(1, round(args.fps * args.chunk_seconds))
    frames, ingest_seconds, ingest_at = [], 0.0, {}
    with torch.inference_mode():
        while len(frames) < targets[-1]:
            next_target = min(target for target in targets if target > len(frames))
            new = np.stack(
                [
                    moving_bar_frame(len(frames) + i, args.image_size)
                    for i in range(min(frames_per_call, next_target - len(frames)))
                ]
            )
            for target, session in sessions.items():
                if session is not longest and session.num_frames < target:
                    session.add_frames(new)
            started = time.perf_counter()
            longest.add_frames(new)
            ingest_seconds += time.perf_counter() - started
            frames.extend(new)
            if len(frames) in sessions:
                ingest_at[len(frames)] = ingest_seconds / (len(frames) / args.fps)

        session_times = {target: [] for target in targets}
        session_tokens, session_peak = {}, dict.fromkeys(targets, 0)
        for _ in range(args.repeats):  # interleaved: each round asks every session once
            for target, session in sessions.items():
                tokens, elapsed, peak = peak_rss_above(session_answer, session, args.new_tokens)
                session_times[target].append(elapsed)
                session_tokens[target] = tokens
                session_peak[target] = max(session_peak[target], peak)

        rows = []
        for target, session in sessions.items():
            baseline_times, baseline_tokens, baseline_peak = [], None, 0
            for _ in range(args.baseline_repeats):
                baseline_tokens, elapsed, peak = peak_rss_above(
                    baseline_answer, model, processor, frames[:target], args.new_tokens
                )
                baseline_times.append(elapsed)
                baseline_peak = max(baseline_peak, peak)
            row = {
                "minutes": target / args.fps / 60,
                "frames": target,
                "video_tokens": session.num_video_tokens,
                "cached_tokens": session.cache.get_seq_length(),
                "kv_cache_bytes": session.kv_cache_bytes,
                "kv_cache_allocated_bytes": session.kv_cache_allocated_bytes,
                "session_seconds": session_times[target],
                "baseline_seconds": baseline_times,
                "session_peak_bytes": session_peak[target],
                "baseline_peak_bytes": baseline_peak,
                "ingest_seconds_per_video_second": ingest_at[target],
                "same_tokens": session_tokens[target] == baseline_tokens,
                "load": os.getloadavg(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    measured_per_token = rows[-1]["kv_cache_bytes"] / rows[-1]["cached_tokens"]
    assert measured_per_token == kv_cache_bytes_per_token(config, dtype_bytes=4), "cache bytes disagree with accounting"
    return {
        "rows": rows,
        "bench_model": {
            "kv_bytes_per_token": measured_per_token,
            "tokens_per_hour": tokens_per_hour(config, args.fps),
            "tokens_per_frame": video_tokens(config, 1, temporal_pool_size=1),
            "vision": f"{config.vision_config.num_hidden_layers} layers x {config.vision_config.hidden_size}",
            "text": f"{config.text_config.num_hidden_layers} layers x {config.text_config.hidden_size}",
        },
        "paper_scale": paper_scale_memory(args.fps),
    }


def render(results: dict, args, plot_name: str) -> tuple[str, str]:
    """The results file's headline table and its body."""
    rows, paper, bench = results["rows"], results["paper_scale"], results["bench_model"]
    first, last = rows[0], rows[-1]
    session_growth = min(last["session_seconds"]) / min(first["session_seconds"])
    baseline_growth = min(last["baseline_seconds"]) / min(first["baseline_seconds"])
    lines = [
        (
            f"- model: random `mid_size_config({args.image_size}, mamba_bidirectional=False)` (SigLIP-base-like vision "
            f"{bench['vision']}, 2 causal Mamba layers, Qwen2-0.5B-like LLM {bench['text']}), float32, "
            f"{args.threads} thread(s); {args.image_size}x{args.image_size} frames (patch {PATCH_SIZE}) -> "
            f"{bench['tokens_per_frame']} tokens per frame, temporal pooling 4, {args.fps:g} fps -> "
            f"{bench['tokens_per_hour']:.0f} video tokens per hour"
        ),
        (
            f"- each answer: the same question, {args.new_tokens} greedy tokens; session = min of {args.repeats} "
            "rounds "
            f"that ask every session once, baseline = min of {args.baseline_repeats}"
        ),
        "",
        (
            "| video | frames | video tokens | session answer (s) | baseline answer (s) | speed-up | session ingest "
            "(s per s of video) | KV cache (allocated) | session peak RSS + | baseline peak RSS + | same tokens | "
            "load (1 min) |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    table_start = len(lines) - 2
    for row in rows:
        session, baseline = min(row["session_seconds"]), min(row["baseline_seconds"])
        lines.append(
            f"| {row['minutes']:g} min | {row['frames']} | {row['video_tokens']} | {session:.3f} | {baseline:.2f} | "
            f"{baseline / session:.1f}x | {row['ingest_seconds_per_video_second']:.3f} | "
            f"{row['kv_cache_bytes'] / 2**20:.1f} ({row['kv_cache_allocated_bytes'] / 2**20:.1f}) MiB | "
            f"{row['session_peak_bytes'] / 2**20:.0f} MiB | "
            f"{row['baseline_peak_bytes'] / 2**20:.0f} MiB | {'yes' if row['same_tokens'] else 'NO'} | "
            f"{row['load'][0]:.1f} |"
        )
    headline = "\n".join(lines[table_start:])
    del lines[table_start:]
    target_met = "met" if session_growth <= 1.2 else "NOT met"
    lines += [
        "",
        (
            f"Per-question latency from {first['minutes']:g} to {last['minutes']:g} min of video: session x"
            f"{session_growth:.2f} (target <= 1.2x: {target_met}), baseline x{baseline_growth:.1f}."
        ),
        "",
        f"![latency vs stream length]({plot_name})",
        "",
        "## KV-cache memory per hour of video",
        "",
        (
            f"- this benchmark's model: {bench['kv_bytes_per_token']:.0f} bytes per token (float32, measured from the "
            f"session's cache = 2 x layers x KV heads x head dim x 4), {bench['tokens_per_hour']:.0f} tokens per "
            f"hour -> {bench['kv_bytes_per_token'] * bench['tokens_per_hour'] / 2**20:.1f} MiB per hour of video"
        ),
        (
            f"- the paper's 7B model (`StormConfig()`, bf16): {paper['tokens_per_frame']} tokens per 448 px frame, "
            f"temporal pooling {paper['temporal_pool_size']}, {args.fps:g} fps -> "
            f"{paper['tokens_per_hour']:.0f} tokens per hour; "
            f"2 x {paper['layers']} layers x {paper['kv_heads']} KV heads x {paper['head_dim']} x 2 bytes = "
            f"{paper['kv_bytes_per_token']} bytes per token -> **{paper['kv_bytes_per_hour'] / 1e9:.1f} GB "
            f"({paper['kv_bytes_per_hour'] / 2**30:.1f} GiB) of KV cache per hour of video** "
            "(spatial pooling 2 divides it by 4; temporal sampling stride 2 by 2)"
        ),
        "",
        (
            "The session's per-question cost is the question's prefill on top of the cached video plus the decoding: "
            "the video is never encoded or prefilled again, so it grows only with attention over the longer cache. "
            "The baseline re-runs the vision tower, the projector and the prefill over every frame so far for each "
            "question. "
            "The session pays the encoding once, as the video plays (ingest column: a value below 1 keeps up with "
            "real time)."
        ),
    ]
    return headline, "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    minutes = [row["minutes"] for row in rows]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(
        minutes, [min(row["baseline_seconds"]) for row in rows], "o-", label="re-encode + re-prefill per question"
    )
    axis.plot(minutes, [min(row["session_seconds"]) for row in rows], "o-", label="streaming session (KV cache)")
    axis.set_xlabel("video so far (minutes at 1 frame per second)")
    axis.set_ylabel("seconds per answer")
    axis.set_yscale("log")
    axis.set_title("Per-question latency as the stream grows (CPU, mid-size model)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    args = parse_args()
    run = start_run()
    results = run_benchmark(args)
    results["settings"] = {key: str(value) for key, value in vars(args).items()}
    plot_path = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, plot_path)
    headline, body = render(results, args, plot_path.name)
    title = "# Live video: streaming session vs re-encoding the whole video per question"
    print(write_results(args.out.stem, title, body, results, run, headline=headline, results_dir=args.out.parent))


if __name__ == "__main__":
    main()
