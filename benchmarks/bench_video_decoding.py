"""Decode + sample + preprocess benchmark: `StormVideoProcessor` against transformers' PyAV loader.

Baseline: `transformers.video_utils.load_video(path, backend="pyav", num_frames=k)` (decodes every frame up to the
last sampled one) followed by a stock `BaseVideoProcessor` with the same resize/normalisation (448x448 bicubic,
mean = std = 0.5). Candidate: `StormVideoProcessor(path, num_frames=k)` (seeks to the keyframe before each sampled
frame when that decodes less than reading on).

Synthetic 854x480 30 fps H.264 videos (x264 `veryfast`, GOP 250, B-frames) of 1, 10 and 30 minutes are generated once
and cached under `benchmarks/.cache/`. Every case runs in a fresh process, so peak memory is the process's peak RSS
above its RSS after imports.

    python benchmarks/bench_video_decoding.py                # writes benchmarks/results/video_decoding.md
    python benchmarks/bench_video_decoding.py --minutes 1    # a quick subset
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np


CACHE_DIR = Path(__file__).parent / ".cache"
RESULTS_FILE = Path(__file__).parent / "results" / "video_decoding.md"
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


def run_case(method: str, minutes: int, num_frames: int) -> dict:
    """Time one decode + sample + preprocess in this process; returns seconds and peak memory above the start."""
    import torch
    from transformers.image_utils import PILImageResampling
    from transformers.video_processing_utils import BaseVideoProcessor
    from transformers.video_utils import load_video

    from storm_hf.processing import StormVideoProcessor

    torch.set_num_threads(os.cpu_count())
    path = str(synthetic_video(minutes))
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

    def candidate(num_frames):
        return storm(path, num_frames=num_frames, return_tensors="pt")["pixel_values_videos"]

    function = {"baseline": baseline, "storm": candidate}[method]
    function(2)  # warm up the code paths (lazy imports, kernels) with two frames
    start_rss, start_cpu, start = _peak_rss_mib(), _cpu_seconds(), time.perf_counter()
    pixel_values = function(num_frames)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - start_cpu
    assert pixel_values.shape[-4:] == (num_frames, 3, 448, 448), pixel_values.shape
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": _peak_rss_mib() - start_rss}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--num-frames", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # "method,minutes,num_frames": run one case, print JSON
    args = parser.parse_args()
    if args.case:
        method, minutes, num_frames = args.case.split(",")
        print(json.dumps(run_case(method, int(minutes), int(num_frames))))
        return

    load_at_start = os.getloadavg()[0]
    rows = []
    for minutes in args.minutes:
        synthetic_video(minutes)
        for num_frames in args.num_frames:
            result = {}
            for method in ("baseline", "storm"):
                output = subprocess.run(
                    [sys.executable, __file__, "--case", f"{method},{minutes},{num_frames}"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                result[method] = json.loads(output.strip().splitlines()[-1])
            base, storm = result["baseline"], result["storm"]
            rows.append(
                f"| {minutes} min | {num_frames} | {base['seconds']:.2f} | {storm['seconds']:.2f} "
                f"| {base['seconds'] / storm['seconds']:.1f}x | {base['cpu_seconds']:.2f} | {storm['cpu_seconds']:.2f} "
                f"| {base['cpu_seconds'] / storm['cpu_seconds']:.1f}x | {base['peak_mib']:.0f} | {storm['peak_mib']:.0f} |"
            )
            print(rows[-1], flush=True)

    import torch
    import transformers

    table = "\n".join(
        [
            "# Video decoding benchmark",
            "",
            f"`python benchmarks/bench_video_decoding.py` on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, PyAV {av.__version__}. Synthetic {WIDTH}x{HEIGHT} {FPS} fps "
            f"H.264 (x264 veryfast, GOP {GOP}). Time: decode + sample + preprocess to (frames, 3, 448, 448), one run "
            "after a warm-up; wall time and CPU time (user + system, all threads; less sensitive to other load on the "
            f"machine; 1-minute load average, as `uptime` shows it, {load_at_start:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end). Peak memory: peak RSS above the RSS before the call (fresh process "
            "per case).",
            "",
            "| video | frames | baseline wall s | STORM wall s | speed-up | baseline CPU s | STORM CPU s | CPU speed-up "
            "| baseline peak MiB | STORM peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Baseline: `transformers.video_utils.load_video(path, backend=\"pyav\", num_frames=k)` (decodes every frame "
            "up to the last sampled one) + a stock `BaseVideoProcessor` with the same resize and normalisation. "
            "STORM: `StormVideoProcessor()(path, num_frames=k)`.",
            "",
            "Seeking pays off when sampled frames are further apart than the keyframe interval (GOP 250 = 8.3 s here): "
            "each then costs the reference frames from its keyframe on, about half a GOP. In these x264 streams about "
            "60% of the frames are references (I, P and b-pyramid B-frames); only the non-reference B-frames are skipped "
            "(skip_frame NONREF), so a sampled frame costs about 60 decoded frames. Denser sampling (128 frames "
            "of a 10-minute video are 4.7 s apart) still decodes most reference frames; the gain then comes from "
            "skipping non-reference frames and the tail of each GOP. Peak memory depends on the frame count, not on "
            "the video length.",
            "",
        ]
    )
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(table)
    print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
    main()
