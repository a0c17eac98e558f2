"""What each inference setting of STORM changes in its prefill: the STORM arm of `bench_peers.py` at one frame count,
once per setting, repeated and interleaved.

Settings (issue 24, item 4; the architecture stays: every frame goes through SigLIP and the Mamba layers):
  defaults                          the StormConfig defaults (Mamba inference chunk 128 positions, 16 frames per vision
                                    micro-batch, sdpa attention in the vision tower)
  whole-sequence Mamba scan         mamba_inference_chunk_length=null: each Mamba layer scans the whole video at once
                                    (in_proj/out_proj once for both directions; memory: the whole sequence's
                                    intermediates)
  vision micro-batch 4 / 64         vision_batch_size=4 / 64 frames per SigLIP call
  eager vision attention            the vision tower's attention as eager matmul + softmax instead of sdpa

Each (setting, repeat) is one fresh `bench_peers.py` worker process (the model built from seed 0, a 4-frame warm-up,
then the measured `generate`); the table gives, per setting, the repeat with the smallest prefill CPU time (on a shared
machine the least disturbed) and the spread over repeats.

    python benchmarks/bench_storm_settings.py                       # STORM T.Pool, 64 frames, 0.5b LLM, 1 thread
    python benchmarks/bench_storm_settings.py --arm "STORM none" --frames 16 --repeats 1
"""

import argparse
import shlex
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import LLM_SHAPES, PARTS, STORM_ARMS, VISION_SHAPES, measure  # noqa: E402
from common import start_run, write_results  # noqa: E402


SETTINGS = {  # name: (StormConfig settings, vision attention)
    "defaults": ({}, "sdpa"),
    "whole-sequence Mamba scan": ({"mamba_inference_chunk_length": None}, "sdpa"),
    "vision micro-batch 4": ({"vision_batch_size": 4}, "sdpa"),
    "vision micro-batch 64": ({"vision_batch_size": 64}, "sdpa"),
    "eager vision attention": ({}, "eager"),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=list(STORM_ARMS), default="STORM T.Pool")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--llm", choices=list(LLM_SHAPES), default="0.5b")
    parser.add_argument("--vision", choices=list(VISION_SHAPES), default="siglip-base")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=2, help="workers per setting, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--name", default="storm_settings", help="results file name in benchmarks/results")
    return parser.parse_args()


def worker_args(args, setting: str) -> argparse.Namespace:
    """The `bench_peers.py` arguments that measure `args.arm` with `setting`."""
    storm_config, vision_attention = SETTINGS[setting]
    return argparse.Namespace(
        arms=[args.arm],
        frames=[args.frames],
        llm=args.llm,
        vision=args.vision,
        new_tokens=3,
        device="cpu",
        dtype="float32",
        threads=args.threads,
        storm_config=storm_config,
        vision_attention=vision_attention,
    )


def render(rows: dict, args) -> str:
    lines = [
        "| setting | prefill CPU s (vision / projector / LLM / other) | projector share | prefill CPU s over repeats "
        "| peak MiB |",
        "|---|---|---:|---|---:|",
    ]
    baseline = min(row["prefill_cpu_s"] for row in rows["defaults"]) if "defaults" in rows else None
    for setting, runs in rows.items():
        best = min(runs, key=lambda row: row["prefill_cpu_s"])
        split = best["split_cpu_s"]
        parts = " / ".join(f"{split[part]:.2f}" for part in (*PARTS, "other"))
        change = f" ({best['prefill_cpu_s'] / baseline - 1:+.1%})" if baseline and setting != "defaults" else ""
        spread = ", ".join(f"{row['prefill_cpu_s']:.2f}" for row in runs)
        lines.append(
            f"| {setting} | {best['prefill_cpu_s']:.2f}{change} ({parts}) | "
            f"{split['projector'] / best['prefill_cpu_s']:.1%} | {spread} | {best['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def main():
    args = parse_args()
    run = start_run([shlex.quote(arg) for arg in sys.argv[1:]])
    rows = {setting: [] for setting in args.settings}
    for _ in range(args.repeats):
        for setting in args.settings:
            *_, measured = measure(worker_args(args, setting))
            rows[setting] += measured
    loads = [row["load"] for runs in rows.values() for row in runs]
    title = f"# STORM inference settings: {args.arm} at {args.frames} frames ({args.vision}, {args.llm} LLM, CPU)"
    body = (
        f"`bench_peers.py`'s {args.arm} arm: {args.vision} vision tower, {args.llm}-shaped Qwen2, random weights, "
        f"float32, {args.threads} torch thread(s), {args.frames} frames; prefill = `generate` up to its first token, "
        f"split with forward hooks (projector: pixel-shuffle Linear + Mamba layers + compressor). {args.repeats} "
        f"worker(s) per setting, interleaved; shown: the repeat with the least prefill CPU time, and in brackets its "
        f"change from the defaults. 1-minute load average during the workers {min(loads)}-{max(loads)}."
    )
    data = {"rows": rows, "settings": {setting: SETTINGS[setting] for setting in args.settings}}
    path = write_results(args.name, title, body, data, run, headline=render(rows, args))
    print(path.read_text())


if __name__ == "__main__":
    main()
