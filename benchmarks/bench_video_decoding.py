"""Decode + sample + preprocess benchmark: `StormVideoProcessor` with the decoder of an earlier revision (before) and
of the working tree (after, under the default `VideoIntakePolicy`), in the same run, and transformers' PyAV loader.

Baseline: `transformers.video_utils.load_video(path, backend="pyav", num_frames=k)` (decodes every frame up to the
last sampled one) followed by a stock `BaseVideoProcessor` with the same resize/normalisation (448x448 bicubic,
mean = std = 0.5). Before: `StormVideoProcessor()(path, num_frames=k)` with `read_video` from
`src/storm_hf/processing/video_decoding.py` as it is at `--before` (read with `git show`; the default is the revision
before the intake policy, issue 20). After: the same with the working tree's decoder, which resizes each frame with the
processor's resize as it is decoded instead of keeping the frames whole until the processor resizes them all. Before
and after must give identical pixel values (checked).

Synthetic 854x480 30 fps H.264 videos (x264 `veryfast`, GOP 250, B-frames) of `--minutes` are generated once and
cached under `benchmarks/.cache/`. Every case runs in a fresh process, so peak memory is the process's peak RSS
above its RSS before the call. Each case runs `--repeats` times, the three methods interleaved in a rotating order;
the minimum wall and CPU times are reported (on a shared machine the minimum is the estimate least polluted by
other jobs), with the ratios of the minima.

    python benchmarks/bench_video_decoding.py                  # 1-minute video, 32 and 128 frames
    python benchmarks/bench_video_decoding.py --minutes 1 10   # and a 10-minute one
"""

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
from common import start_run, write_results


CACHE_DIR = Path(__file__).parent / ".cache"
DECODER_PATH = "src/storm_hf/processing/video_decoding.py"
BEFORE = "5e1b8dd~1"  # the last revision before the intake policy
METHODS = ("baseline", "before", "after")
WIDTH, HEIGHT, FPS, GOP = 854, 480, 30, 250


def synthetic_video(minutes: int) -> Path:
    """Path of a cached `minutes`-long 480p H.264 mp4, generated on first use (low-complexity moving content)."""
    path = CACHE_DIR / f"synthetic_{minutes}min_{HEIGHT}p.mp4"
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    background = np.zeros((HEIGHT, 2 * WIDTH, 3), dtype=np.uint8)
    background[..., 0] = np.linspace(0, 255, 2 * WIDTH, dtype=np.uint8)[None]
    background[..., 1] = np.linspace(0, 255, HEIGHT, dtype=np.uint8)[:, None]
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(GOP), "keyint_min": str(GOP)}
        for index in range(minutes * 60 * FPS):
            shift = (4 * index) % WIDTH
            frame = background[:, shift : shift + WIDTH].copy()
            row = 40 + (index * 3) % (HEIGHT - 120)
            frame[row : row + 80, 100:180] = (index * 7) % 256  # a moving box whose shade changes every frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)
    return path


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def before_decoder(revision: str) -> Path:
    """Path of a copy of the decoder module as it is at `revision` (it imports no sibling module)."""
    source = subprocess.run(["git", "show", f"{revision}:{DECODER_PATH}"], check=True, capture_output=True, text=True)
    path = CACHE_DIR / "video_decoding_before.py"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(source.stdout)
    return path


def run_case(method: str, minutes: int, num_frames: int) -> dict:
    """Time one decode + sample + preprocess in this process; returns seconds, peak memory above the start, and a
    digest of the pixel values."""
    import torch
    from transformers.image_utils import PILImageResampling
    from transformers.video_processing_utils import BaseVideoProcessor
    from transformers.video_utils import load_video

    from storm_hf.processing import StormVideoProcessor, video_processing_storm

    torch.set_num_threads(os.cpu_count())
    path = str(synthetic_video(minutes))
    if method == "before":  # the processor calls the module-level name it imported
        spec = importlib.util.spec_from_file_location("video_decoding_before", CACHE_DIR / "video_decoding_before.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        video_processing_storm.read_video = lambda video, sampler, **intake: module.read_video(video, sampler)
    storm = StormVideoProcessor()
    stock = BaseVideoProcessor(
        size={"height": 448, "width": 448},
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        do_sample_frames=False,
    )

    def baseline(num_frames):
        frames, _ = load_video(path, backend="pyav", num_frames=num_frames)
        return stock(frames, return_tensors="pt")["pixel_values_videos"]

    def storm_processor(num_frames):
        return storm(path, num_frames=num_frames, return_tensors="pt")["pixel_values_videos"]

    function = baseline if method == "baseline" else storm_processor
    function(2)  # warm up the code paths (lazy imports, kernels) with two frames
    start_rss, start_cpu, start = _peak_rss_mib(), _cpu_seconds(), time.perf_counter()
    pixel_values = function(num_frames)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - start_cpu
    assert pixel_values.shape[-4:] == (num_frames, 3, 448, 448), pixel_values.shape
    digest = hashlib.sha256(pixel_values.contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": _peak_rss_mib() - start_rss, "digest": digest}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, nargs="+", default=[1])
    parser.add_argument("--num-frames", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--before", default=BEFORE, help="git revision whose decoder is the 'before' column")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (minimum reported)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # "method,minutes,num_frames": run one case, print JSON
    args = parser.parse_args()
    if args.case:
        method, minutes, num_frames = args.case.split(",")
        print(json.dumps(run_case(method, int(minutes), int(num_frames))))
        return

    run = start_run()
    before = subprocess.run(["git", "rev-parse", "--short", args.before], check=True, capture_output=True, text=True)
    before_decoder(args.before)
    rows, cases = [], []
    for minutes in args.minutes:
        synthetic_video(minutes)
        for num_frames in args.num_frames:
            runs = {method: [] for method in METHODS}
            for repeat in range(args.repeats):
                for method in METHODS[repeat % 3 :] + METHODS[: repeat % 3]:
                    case = f"{method},{minutes},{num_frames}"
                    output = subprocess.run(
                        [sys.executable, __file__, "--case", case], check=True, capture_output=True, text=True
                    ).stdout
                    runs[method].append(json.loads(output.strip().splitlines()[-1]))
            result = {
                method: {
                    "seconds": min(run["seconds"] for run in method_runs),
                    "cpu_seconds": min(run["cpu_seconds"] for run in method_runs),
                    "peak_mib": max(run["peak_mib"] for run in method_runs),
                    "runs": method_runs,
                }
                for method, method_runs in runs.items()
            }
            digests = {run["digest"] for method in ("before", "after") for run in runs[method]}
            if len(digests) != 1:
                raise SystemExit(f"{minutes} min, {num_frames} frames: before and after give different pixels")
            base, old, new = (result[method] for method in METHODS)
            rows.append(
                f"| {minutes} min | {num_frames} | {base['seconds']:.2f} | {old['seconds']:.2f} | "
                f"{new['seconds']:.2f} | {old['seconds'] / new['seconds']:.2f}x | {base['cpu_seconds']:.2f} | "
                f"{old['cpu_seconds']:.2f} | {new['cpu_seconds']:.2f} | "
                f"{old['cpu_seconds'] / new['cpu_seconds']:.2f}x | "
                f"{base['peak_mib']:.0f} / {old['peak_mib']:.0f} / {new['peak_mib']:.0f} |"
            )
            cases.append({"minutes": minutes, "num_frames": num_frames, **result})
            print(rows[-1], flush=True)

    table = "\n".join(
        [
            "| video | frames | baseline wall s | before wall s | after wall s | after vs before | baseline CPU s "
            "| before CPU s | after CPU s | after vs before (CPU) | peak MiB baseline / before / after |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
    )
    body = "\n".join(
        [
            f"Decoder before: `{DECODER_PATH}` at `{args.before}` ({before.stdout.strip()}); after: the working tree "
            "(see Provenance), default `VideoIntakePolicy`. "
            f"Synthetic {WIDTH}x{HEIGHT} {FPS} fps H.264 (x264 veryfast, GOP {GOP}). Time: decode + sample + "
            "preprocess to (frames, 3, 448, 448), one run after a warm-up, each case in a fresh process; wall time "
            f"and CPU time (user + system, all threads), the minimum of {args.repeats} runs per method, the methods "
            "interleaved. Peak memory: the largest peak RSS above the RSS before the call.",
            "",
            'Baseline: `transformers.video_utils.load_video(path, backend="pyav", num_frames=k)` (decodes every '
            "frame up to the last sampled one) + a stock `BaseVideoProcessor` with the same resize and "
            'normalisation. Before/after: `StormVideoProcessor()(path, num_frames=k)`; "after vs before" above 1 '
            "means the working tree is faster. After resizes each 854x480 frame to 448x448 with the processor's resize "
            "as it is decoded; before kept the frames whole until the processor resized them. Before and after gave "
            "identical pixel values in every run (SHA-256 of the tensors).",
        ]
    )
    path = write_results("video_decoding", "# Video decoding benchmark", body, {"cases": cases}, run, headline=table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
