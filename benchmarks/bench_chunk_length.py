"""Speed and memory of STORM's Mamba layers at inference over `StormConfig.mamba_inference_chunk_length`.

The chunk length decides how many positions of the flattened video sequence a Mamba layer scans at a time at
inference on the PyTorch scan: a sequence of at most that many positions is scanned at once (`in_proj` and `out_proj`
run once for both directions), a longer one in chunks, each direction carrying its state (`in_proj` and `out_proj`
then run once per direction; memory is one chunk's intermediates). This benchmark measures the temporal projector's
Mamba layers (`StormTemporalProjector` on already projected frame tokens: the part the chunk length changes) of the
mid-size config (`common.mid_size_config(256)`: 64 tokens per frame, width 896, 2 bidirectional layers) at 64-256
frames, for each chunk length, under `torch.no_grad()`.

Each (frames, chunk length) runs in a fresh subprocess: build the projector (seed 0: the same weights everywhere),
warm up on 8 frames, reset the kernel's resident-set high-water mark, then `--repeats` calls; reported are the minimum
wall and process CPU time (all threads) over the calls (on a shared machine the minimum is the estimate least polluted
by other jobs) and the peak RSS growth of the first. Every chunk length must give
the output of the whole-sequence scan (checked on a checksum of the output).

    python benchmarks/bench_chunk_length.py                                  # 64 128 256 frames, 1 thread
    python benchmarks/bench_chunk_length.py --frames 64 --chunk-lengths 32 4096 none --threads 2
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mid_size_config, proc_status_kib, start_run, write_results  # noqa: E402


IMAGE_SIZE = 256  # patch 16, 2x2 pixel-shuffle: 8x8 = 64 tokens per frame
WARM_UP_FRAMES = 8


def parse_chunk_length(value: str) -> int | None:
    return None if value == "none" else int(value)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument(
        "--chunk-lengths",
        type=parse_chunk_length,
        nargs="+",
        default=[32, 256, 1024, 4096, 8192, None],
        help="positions per chunk; 'none': the whole sequence at once",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per (frames, chunk length)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--name", default="chunk_length", help="results file name in benchmarks/results")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMES", "CHUNK_LENGTH"), help=argparse.SUPPRESS)
    return parser.parse_args()


def run_worker(args):
    """Fresh process: one (frames, chunk length); prints one JSON line."""
    import torch

    from storm_hf.modeling.modeling_storm import StormTemporalProjector

    torch.set_num_threads(args.threads)
    num_frames, chunk_length = int(args.worker[0]), parse_chunk_length(args.worker[1])
    config = mid_size_config(IMAGE_SIZE, mamba_inference_chunk_length=chunk_length)
    torch.manual_seed(0)
    projector = StormTemporalProjector(config).eval()
    grid = config.merged_grid_size
    hidden_size = config.text_config.hidden_size
    tokens = torch.randn(num_frames, grid, grid, hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        projector(None, [WARM_UP_FRAMES], frame_tokens=tokens[:WARM_UP_FRAMES])
        baseline = proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        walls, cpus = [], []
        for repeat in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            (output,), _ = projector(None, [num_frames], frame_tokens=tokens)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            if repeat == 0:
                growth_mib = (proc_status_kib("VmHWM") - baseline) / 1024
    print(
        json.dumps(
            {
                "frames": num_frames,
                "chunk_length": chunk_length,
                "positions": num_frames * grid * grid,
                "wall_s": min(walls),
                "cpu_s": min(cpus),
                "cpus": cpus,
                "walls": walls,
                "growth_mib": growth_mib,
                "tokens_mib": tokens.numel() * tokens.element_size() / 2**20,
                "checksum": output.double().abs().sum().item(),
            }
        )
    )


def measure(args) -> list[dict]:
    # every large tensor its own mapping, returned to the kernel when freed: the RSS follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    for num_frames in args.frames:
        for chunk_length in args.chunk_lengths:
            command = [sys.executable, __file__, "--worker", str(num_frames), str(chunk_length).lower()]
            command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            load = os.getloadavg()[0]
            completed = subprocess.run(command, capture_output=True, text=True, env=env)
            if completed.returncode != 0:
                failure = completed.stderr[-3000:]
                raise RuntimeError(f"worker {num_frames} frames, chunk {chunk_length} failed:\n{failure}")
            row = json.loads(completed.stdout.strip().splitlines()[-1])
            row["load"] = round(max(load, os.getloadavg()[0]), 1)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def label(chunk_length: int | None) -> str:
    return "whole sequence" if chunk_length is None else str(chunk_length)


def render(rows: list[dict], args) -> tuple[str, str]:
    frames = sorted({row["frames"] for row in rows})
    by_key = {(row["frames"], row["chunk_length"]): row for row in rows}
    whole = {n: by_key.get((n, None)) for n in frames}
    header = "| chunk length | " + " | ".join(
        f"{n} frames ({by_key[n, args.chunk_lengths[0]]['positions']} positions): CPU s / wall s / peak MiB"
        for n in frames
    )
    lines = [header + " |", "|---:|" + "---:|" * len(frames)]
    mismatches = []
    for chunk_length in args.chunk_lengths:
        cells = []
        for n in frames:
            row = by_key[n, chunk_length]
            cells.append(f"{row['cpu_s']:.2f} / {row['wall_s']:.2f} / {row['growth_mib']:.0f}")
            reference = whole[n]
            if reference and abs(row["checksum"] - reference["checksum"]) > 1e-5 * reference["checksum"]:
                mismatches.append((n, chunk_length))
        lines.append(f"| {label(chunk_length)} | " + " | ".join(cells) + " |")
    headline = "\n".join(lines)
    loads = [row["load"] for row in rows]
    body = [
        f"The temporal projector's {mid_size_config(IMAGE_SIZE).mamba_num_layers} bidirectional Mamba layers (width "
        f"896, expand 2, state 16) of `common.mid_size_config({IMAGE_SIZE})` on random projected frame tokens (64 per "
        f"frame), float32, `torch.no_grad()`, {args.threads} torch thread(s) per worker, one fresh process per cell; "
        f"minimum of {args.repeats} calls; peak = RSS high-water mark growth during the first call (glibc "
        "`MALLOC_MMAP_THRESHOLD_=131072`). The projected tokens themselves (the layers' input) take "
        + ", ".join(f"{by_key[n, args.chunk_lengths[0]]['tokens_mib']:.0f} MiB at {n} frames" for n in frames)
        + f". 1-minute load average during the cells: {min(loads)}-{max(loads)} on {os.cpu_count()} cores "
        "(wall times above the CPU times: the cores were shared).",
        "",
        "Every chunk length gave the whole-sequence output (checksums equal to 1e-5)"
        if not mismatches
        else f"**Outputs differ from the whole-sequence scan at {mismatches}**",
    ]
    return headline, "\n".join(body)


def main():
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    run = start_run()
    rows = measure(args)
    headline, body = render(rows, args)
    path = write_results(
        args.name,
        "# Mamba inference chunk length: speed and memory",
        body,
        {"rows": rows, "settings": {"threads": args.threads, "repeats": args.repeats}},
        run,
        headline=headline,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
