"""Where STORM's temporal projector spends its time: the projector of `bench_peers.py`'s STORM arm, profiled per op.

The projector (pixel-shuffle Linear + the bidirectional Mamba layers) runs alone on random frame features of the
peers' shape, once per Mamba inference chunk length, under `torch.profiler`; each named module (`linear`, the layers'
`norm`, `in_proj`, `out_proj`, `x_proj`) is a profiler range, and the selective scan is its autograd Function. The rest
of a Mamba layer (convolution, `dt_proj` matmul, softplus, gating, sequence reversal) is the layer's time minus these.
The share of each part is taken against the STORM T.Pool prefill that `bench_peers.py`'s worker measures in the same
run (defaults, same frames), so the table says which parts alone already exceed a share of the prefill (issue 24, item
3: projector <= 5% on CPU). A last measurement times the selective scan alone with both directions of a layer in one
call (batch 2) against one call per direction, the mixer's way (item 3's "both directions batched").

    python benchmarks/profile_projector.py                        # 64 frames, 0.5b LLM, chunk 128 and whole, 1 thread
    python benchmarks/profile_projector.py --frames 16 --chunk-lengths 128 --no-prefill
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import LLM_SHAPES, VISION_SHAPES, measure, siglip_config, text_config  # noqa: E402
from bench_storm_settings import worker_args  # noqa: E402
from common import start_run, write_results  # noqa: E402


RANGES = ("linear", "norm", "in_proj", "out_proj", "x_proj")  # profiled modules, by attribute name
SCAN = "_SelectiveScanFunction"
PARTS = ("pixel-shuffle Linear", "LayerNorm", "in_proj", "out_proj", "x_proj", "selective scan", "rest of the layers")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--llm", choices=list(LLM_SHAPES), default="0.5b")
    parser.add_argument("--vision", choices=list(VISION_SHAPES), default="siglip-base")
    parser.add_argument(
        "--chunk-lengths", nargs="+", default=["128", "none"], help="mamba_inference_chunk_length values ('none')"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed projector calls per chunk length (min kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-prefill", action="store_true", help="skip the STORM T.Pool prefill (no shares)")
    parser.add_argument("--name", default="projector_profile", help="results file name in benchmarks/results")
    return parser.parse_args()


def projector_config(args, chunk_length: int | None):
    """The STORM arm's config (bench_peers' shapes, StormConfig defaults otherwise) with `chunk_length`."""
    from storm_hf import StormConfig

    return StormConfig(
        vision_config=siglip_config(args, VISION_SHAPES[args.vision]["layers_used"] + 1),
        text_config=text_config(args),
        mamba_inference_chunk_length=chunk_length,
    )


def label_modules(projector) -> None:
    """Makes every call of the modules named in RANGES a profiler range of that name."""
    for name, module in projector.named_modules():
        label = name.rsplit(".", 1)[-1].removesuffix("_b")
        if label in RANGES:
            module.register_forward_pre_hook(lambda module, inputs, label=label: _enter(module, label))
            module.register_forward_hook(_exit)


def _enter(module, label: str) -> None:
    module._profile_range = record_function(label)
    module._profile_range.__enter__()


def _exit(module, inputs, output) -> None:
    module._profile_range.__exit__(None, None, None)


def profile_projector(args, chunk_length: int | None) -> dict:
    """Seconds per part (profiled CPU time, one call) and the unprofiled wall time (min over repeats) of one projector
    call on `args.frames` frames."""
    from storm_hf.modeling.modeling_storm import StormTemporalProjector

    config = projector_config(args, chunk_length)
    torch.manual_seed(0)
    projector = StormTemporalProjector(config).eval()
    grid = VISION_SHAPES[args.vision]["px"] // VISION_SHAPES[args.vision]["patch"]
    features = torch.randn(args.frames, grid, grid, config.vision_config.hidden_size)
    with torch.inference_mode():
        projector(features, [args.frames])  # warm-up
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            projector(features, [args.frames])
            walls.append(time.perf_counter() - start)
        label_modules(projector)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            with record_function("projector"):
                projector(features, [args.frames])
    totals = {event.key: event.cpu_time_total / 1e6 for event in profiler.key_averages()}
    seconds = {
        "pixel-shuffle Linear": totals["linear"],
        "LayerNorm": totals.get("norm", 0.0),
        "in_proj": totals["in_proj"],
        "out_proj": totals["out_proj"],
        "x_proj": totals["x_proj"],
        "selective scan": totals[SCAN],
    }
    seconds["rest of the layers"] = totals["projector"] - sum(seconds.values())
    ops = [event for event in profiler.key_averages() if event.key not in (*RANGES, "projector")]
    top_ops = sorted(((op.key, op.self_cpu_time_total / 1e6, op.count) for op in ops), key=lambda op: -op[1])[:8]
    positions = args.frames * (grid // config.downsample_ratio) ** 2
    return {
        "chunk_length": chunk_length,
        "positions": positions,
        "profiled_s": totals["projector"],
        "wall_s": min(walls),
        "walls_s": walls,
        "seconds": seconds,
        "top_ops": top_ops,
    }


def time_directions_batched(args, config, positions: int, chunk_length: int | None) -> dict:
    """Seconds of one layer's two scan directions over `positions` positions, `chunk_length` at a time, as the mixer
    runs them (one `selective_scan` call per direction and chunk, batch 1) and batched (one call per chunk, batch 2);
    min over `args.repeats`. Both batch entries share one `A`: a batched mixer would need a per-entry `A`, which only
    adds a broadcast."""
    from storm_hf.modeling.selective_scan import selective_scan

    width = config.mamba_expand * config.text_config.hidden_size
    length = chunk_length or positions
    generator = torch.Generator().manual_seed(0)

    def inputs(batch: int) -> dict:
        # (batch, length, channels) memory seen as (batch, channels, length), the layout the mixer passes
        def channels_last(channels, scale=1.0, shift=0.0):
            values = torch.randn(batch, length, channels, generator=generator) * scale + shift
            return values.transpose(1, 2)

        return dict(
            u=channels_last(width),
            delta=channels_last(width, shift=-4.0),
            A=-torch.arange(1, config.mamba_state_size + 1.0).expand(width, -1).contiguous(),
            B=channels_last(config.mamba_state_size),
            C=channels_last(config.mamba_state_size),
            D=torch.ones(width),
            z=channels_last(width),
            delta_bias=torch.zeros(width),
            delta_softplus=True,
            return_last_state=True,
        )

    def best(batch: int, calls: int) -> float:
        scan_inputs = inputs(batch)
        times = []
        with torch.inference_mode():
            for _ in range(args.repeats + 1):  # the first is a warm-up
                start = time.perf_counter()
                for _ in range(calls):
                    selective_scan(**scan_inputs)
                times.append(time.perf_counter() - start)
        return min(times[1:])

    chunks = -(-positions // length)
    return {"chunk_length": chunk_length, "two_calls_s": best(1, 2 * chunks), "batched_s": best(2, chunks)}


def render(profiles: list[dict], prefill_s: float | None) -> str:
    share = (lambda seconds: f" ({seconds / prefill_s:.1%})") if prefill_s else (lambda seconds: "")
    columns = " | ".join(PARTS)
    lines = [f"| chunk length | projector wall s | profiled s | {columns} |", "|---|---:|---:|" + "---:|" * len(PARTS)]
    for row in profiles:
        cells = " | ".join(f"{row['seconds'][part]:.3f}{share(row['seconds'][part])}" for part in PARTS)
        chunk = row["chunk_length"] or "whole sequence"
        lines.append(f"| {chunk} | {row['wall_s']:.3f}{share(row['wall_s'])} | {row['profiled_s']:.3f} | {cells} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    run = start_run([shlex.quote(arg) for arg in sys.argv[1:]])
    chunk_lengths = [None if value.lower() == "none" else int(value) for value in args.chunk_lengths]
    profiles = [profile_projector(args, chunk_length) for chunk_length in chunk_lengths]
    config = projector_config(args, None)
    batched = [time_directions_batched(args, config, profiles[0]["positions"], length) for length in chunk_lengths]
    prefill = None
    if not args.no_prefill:
        settings = argparse.Namespace(arm="STORM T.Pool", frames=args.frames, llm=args.llm, vision=args.vision)
        settings.threads = args.threads
        *_, (prefill,) = measure(worker_args(settings, "defaults"))
    prefill_s = prefill["prefill_cpu_s"] if prefill else None
    title = f"# STORM's temporal projector per op: {args.frames} frames ({args.vision}, {args.llm} LLM, CPU)"
    positions = profiles[0]["positions"]
    body = [
        f"The temporal projector of `bench_peers.py`'s STORM arm ({args.vision} features, {args.llm}-shaped width, "
        f"StormConfig defaults: 2 bidirectional Mamba layers, state 16, expand 2) on random frame features of "
        f"{args.frames} frames ({positions} positions), float32, {args.threads} torch thread(s). Projector wall s: "
        f"the least of {args.repeats} unprofiled calls; the parts: profiled CPU time of one call (the profiler adds "
        f"its own overhead: `profiled s` is their sum). `in_proj`, `out_proj`, `x_proj` count both directions; rest "
        f"of the layers: the causal convolution, `dt_proj`, softplus, gating, sequence reversal, chunk copies."
    ]
    if prefill:
        split = " / ".join(f"{prefill['split_cpu_s'][part]:.2f}" for part in ("vision", "projector", "llm"))
        body.append(
            f"\nShares in brackets: of the STORM T.Pool prefill at {args.frames} frames measured in this run by "
            f"`bench_peers.py`'s worker with the defaults: {prefill_s:.2f} CPU s (vision / projector / LLM {split}; "
            f"projector {prefill['split_cpu_s']['projector'] / prefill_s:.1%} there, with the compressor)."
        )
    for row in profiles:
        ops = ", ".join(f"`{name}` {seconds:.3f} s ({count} calls)" for name, seconds, count in row["top_ops"])
        body.append(f"\nTop ops by self CPU time, chunk length {row['chunk_length'] or 'whole sequence'}: {ops}.")
    directions = "; ".join(
        f"chunk length {row['chunk_length'] or 'whole sequence'}: {row['two_calls_s']:.3f} s as two calls, "
        f"{row['batched_s']:.3f} s batched ({row['batched_s'] / row['two_calls_s'] - 1:+.1%})"
        for row in batched
    )
    body.append(
        f"\nBoth scan directions in one call: the selective scan alone over {positions} positions per direction "
        f"(one layer, random inputs in the mixer's layout, min of {args.repeats}), one call per direction and chunk "
        f"(as the mixer runs it) against one call of batch 2 per chunk: {directions}."
    )
    data = {"profiles": profiles, "directions_batched": batched, "prefill": prefill, "args": vars(args)}
    path = write_results(args.name, title, "\n".join(body), data, run, headline=render(profiles, prefill_s))
    print(path.read_text())
    print(json.dumps({"prefill_cpu_s": prefill_s}))


if __name__ == "__main__":
    main()
