"""Token compression benchmark: where `generate` spends its time with and without STORM's token compression.

One random mid-size STORM model (a SigLIP-base-like vision tower at a reduced resolution, the bidirectional Mamba
projector, a Qwen2-0.5B-like language model) answers a prompt about a video of 8..64 frames under four settings:

  none                      temporal_pool_size=1                      (STORM without compression)
  T.Pool                    temporal_pool_size=4
  T.Pool+T.Sampling         temporal_pool_size=4, temporal_sampling_stride=2
  T.Pool+S.Pool+T.Sampling  temporal_pool_size=4, spatial_pool_size=2, temporal_sampling_stride=2

The model is built once. The pooling sizes have no weights: `StormTokenCompressor` copies them from the config in
`__init__` and reads `self.temporal_pool_size` / `self.spatial_pool_size` at every forward, so each setting sets those
two attributes (and the config fields, for consistency); the sampling stride is a per-call input. The memory workers
instead load the same weights with `from_pretrained(..., temporal_pool_size=..., spatial_pool_size=...)` (the
"configs sharing one state dict" route) and must generate the same tokens as the attribute-switched model.

Per (frames, repeat) -- settings interleaved, their order rotated each repeat -- under `torch.no_grad()`:
  vision      `model.model.get_frame_features(frames)` on all frames
  projector   `model.model.temporal_projector(features, [frames])`
              (both run before compression, so they are the same computation for every setting: measured once
              per (frames, repeat) and shared by the four settings)
  compress    `token_compressor(projected, stride)` + embedding lookup + placeholder scatter (the merge)
  prefill     `model(inputs_embeds=merged prompt, use_cache=True, logits_to_keep=1)`: language model + LM head over
              the whole prompt (text + visual tokens), as generate's first step
  decode      manual greedy loop with the KV cache of the prefill: new_tokens - 1 single-token steps, per-token time
  e2e         a real `model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)`, timed separately;
              stage sum = vision + projector + compress + prefill + (new_tokens - 1) * decode
Reported times are the minimum over `--repeats` (the machine may be shared: the minimum is the estimate least
polluted by other jobs; the max/min spread of e2e is reported); ratios (speed-ups, stage sum / e2e, shares of e2e) are
taken within each repeat, where both times were measured seconds apart, and the median over the repeats is reported.
The manual loop must produce the tokens `generate` produces.

Peak memory: one fresh subprocess per (setting, frames) runs the same `generate` call once. CPU: the kernel's
resident-set high-water mark (VmHWM, reset with /proc/self/clear_refs after the model and inputs are loaded), total
and above the post-load RSS. CUDA: `torch.cuda.max_memory_allocated`, total and above the post-load allocation.

    python benchmarks/bench_compression.py                                   # CPU, bf16, 8 16 32 64 frames
    python benchmarks/bench_compression.py --threads 1 --new-tokens 8       # a CPU shared with other jobs

On a CPU that other jobs keep busy, `--threads 1` measures the model rather than the scheduler: with one OpenMP thread
per core, every parallel region waits for whichever thread was descheduled (measured here at load 8 on 2 cores:
2 threads 3-10x slower than 1 thread for the same prefill/decode).
    python benchmarks/bench_compression.py --device cuda --frames 32 64 128 256 512
    python benchmarks/bench_compression.py --frames 8 --repeats 1 --new-tokens 2 --image-size 64 \
        --out /tmp/compression_check.md                                      # a quick check of the script

Writes benchmarks/results/compression.md and .json through `common.write_results` (command, commit, machine, load,
versions); its headline is each setting at the largest frame count.
"""

import argparse
import gc
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    PAD_TOKEN_ID,
    RESULTS,
    VIDEO_TOKEN_ID,
    load_average,
    mid_size_config,
    proc_status_kib,
    start_run,
    write_results,
)


SETTINGS = {  # name: (temporal_pool_size, spatial_pool_size, temporal_sampling_stride)
    "none": (1, 1, 1),
    "T.Pool": (4, 1, 1),
    "T.Pool+T.Sampling": (4, 1, 2),
    "T.Pool+S.Pool+T.Sampling": (4, 2, 2),
}
BASELINE = "none"
TEXT_BEFORE, TEXT_AFTER = 20, 16  # ChatML system prompt + user turn header / question + assistant header


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per call (>= 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default="bfloat16")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default, one per core); also for workers"
    )
    parser.add_argument("--image-size", type=int, default=256, help="frame side in pixels (patch 16)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "compression.md",
        help="results file; its .json is written beside it (a quick check: a path in /tmp)",
    )
    parser.add_argument("--worker", nargs=3, metavar=("MODEL_DIR", "SETTING", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (one prefill token, then decode steps)")
    if BASELINE not in args.settings:
        args.settings.insert(0, BASELINE)
    return args


def apply_setting(model, name):
    """Switches the compression of an already built model (the pooling sizes are weightless config values)."""
    temporal_pool, spatial_pool, _ = SETTINGS[name]
    model.model.token_compressor.temporal_pool_size = temporal_pool
    model.model.token_compressor.spatial_pool_size = spatial_pool
    model.config.temporal_pool_size = temporal_pool
    model.config.spatial_pool_size = spatial_pool


def visual_tokens(setting, frames, image_size):
    from storm_hf.accounting import video_tokens

    temporal_pool, spatial_pool, stride = SETTINGS[setting]
    return video_tokens(
        mid_size_config(image_size),
        frames,
        temporal_pool_size=temporal_pool,
        spatial_pool_size=spatial_pool,
        temporal_sampling_stride=stride,
    )


def make_inputs(setting, frames, image_size, dtype, device):
    """One prompt: text, the video's placeholders, text; pixels of `frames` random frames (same for every setting)."""
    import torch

    generator = torch.Generator().manual_seed(frames)
    text = torch.randint(1, 150000, (TEXT_BEFORE + TEXT_AFTER,), generator=generator)
    pixels = torch.randn(1, frames, 3, image_size, image_size, generator=generator)
    placeholders = torch.full((visual_tokens(setting, frames, image_size),), VIDEO_TOKEN_ID)
    input_ids = torch.cat([text[:TEXT_BEFORE], placeholders, text[TEXT_BEFORE:]])[None]
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values_videos": pixels.to(device, dtype),
        "video_num_frames": torch.tensor([[frames]], device=device),
        "temporal_sampling_stride": torch.tensor([SETTINGS[setting][2]], device=device),
    }


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def generate(model, inputs, new_tokens):
    return model.generate(
        **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD_TOKEN_ID
    )


def measure_setting(model, setting, inputs, projected, new_tokens, device):
    """compress+merge, prefill, decode (manual KV-cache loop) and e2e (generate) of one setting; projected is shared."""
    import torch

    core = model.model
    stride = SETTINGS[setting][2]
    row = {}

    def merge():
        video_tokens = core.token_compressor(projected, stride)
        embeds = core.get_input_embeddings()(inputs["input_ids"])
        mask = (inputs["input_ids"] == VIDEO_TOKEN_ID).unsqueeze(-1)
        return embeds.masked_scatter(mask, video_tokens.to(embeds.dtype))

    row["compress"], embeds = timed(merge, device)
    attention_mask = inputs["attention_mask"]
    row["prefill"], out = timed(
        lambda: model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=True, logits_to_keep=1), device
    )
    cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]

    def decode():
        nonlocal token, attention_mask
        for _ in range(new_tokens - 1):
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(1, 1)], dim=1)
            step = model(
                input_ids=token, attention_mask=attention_mask, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            token = step.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)

    decode_seconds, _ = timed(decode, device)
    row["decode"] = decode_seconds / (new_tokens - 1)
    del cache, out, embeds
    row["e2e"], sequences = timed(lambda: generate(model, inputs, new_tokens), device)
    row["generated"] = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    row["manual"] = torch.cat(tokens, dim=1)[0].tolist()
    return row


def set_threads(args):
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)


def run_benchmark(args):
    import torch
    from transformers.utils import logging

    from storm_hf import StormForConditionalGeneration

    logging.set_verbosity_error()
    set_threads(args)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    build_start = time.perf_counter()
    # built in `dtype` (not cast afterwards, which would also round the rotary `inv_freq` buffers to bf16), exactly as
    # `from_pretrained(..., dtype=dtype)` builds it in the memory workers
    model = StormForConditionalGeneration._from_config(mid_size_config(args.image_size), dtype=dtype).to(device).eval()
    build_seconds = time.perf_counter() - build_start
    core = model.model
    model_text = describe_model(model)
    print(f"built the model in {build_seconds:.0f} s; {model_text}", flush=True)

    vision_calls = []
    core.vision_tower.register_forward_hook(lambda *_: vision_calls.append(1))

    # warm-up: every setting once at the smallest frame count, untimed
    with torch.no_grad():
        for setting in args.settings:
            apply_setting(model, setting)
            generate(model, make_inputs(setting, min(args.frames), args.image_size, dtype, device), args.new_tokens)
    vision_calls.clear()

    samples, loads = {}, {}
    for frames in args.frames:
        loads[frames] = [load_average()[0]]
        inputs = {s: make_inputs(s, frames, args.image_size, dtype, device) for s in args.settings}
        pixels = inputs[BASELINE]["pixel_values_videos"][0]
        for repeat in range(args.repeats):
            with torch.no_grad():
                vision, features = timed(lambda: core.get_frame_features(pixels), device)
                projector, (projected, _) = timed(lambda: core.temporal_projector(features, [frames]), device)
                del features
                shift = repeat % len(args.settings)
                for setting in args.settings[shift:] + args.settings[:shift]:
                    apply_setting(model, setting)
                    row = measure_setting(model, setting, inputs[setting], projected[0], args.new_tokens, device)
                    row.update(vision=vision, projector=projector)
                    samples.setdefault((frames, setting), []).append(row)
                    print(
                        f"frames {frames:4d} repeat {repeat} {setting:26s} "
                        + " ".join(f"{k} {row[k]:.3f}" for k in ("vision", "projector", "prefill", "decode", "e2e")),
                        flush=True,
                    )
                del projected
            gc.collect()
        loads[frames].append(load_average()[0])
    # each encoding runs the tower once per micro-batch of `vision_batch_size` frames
    micro_batches = sum(math.ceil(frames / model.config.vision_batch_size) for frames in args.frames)
    expected_vision_calls = micro_batches * args.repeats * (len(args.settings) + 1)
    assert len(vision_calls) == expected_vision_calls, (
        f"vision tower ran {len(vision_calls)} times, expected {expected_vision_calls}: generate re-encodes the video"
    )

    memory = {}
    if not args.no_memory:
        model_dir = Path(tempfile.mkdtemp(prefix="storm_bench_"))
        try:
            apply_setting(model, BASELINE)
            model.save_pretrained(model_dir)
            del model, core
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            for frames in args.frames:
                for setting in args.settings:
                    memory[frames, setting] = run_worker_subprocess(args, model_dir, setting, frames)
                    print(
                        f"frames {frames:4d} {setting:26s} peak {memory[frames, setting]['peak_mb']:.0f} MB", flush=True
                    )
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)

    return samples, memory, dict(build_seconds=build_seconds, loads=loads, model_text=model_text)


def run_worker_subprocess(args, model_dir, setting, frames):
    command = [sys.executable, __file__, "--worker", str(model_dir), setting, str(frames)]
    command += ["--device", args.device, "--dtype", args.dtype, "--image-size", str(args.image_size)]
    command += ["--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"memory worker {setting} frames={frames} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_worker(args):
    """Fresh process: load the saved weights with this setting's pooling in the config, one generate, peak memory."""
    import torch
    from transformers.utils import logging

    from storm_hf import StormForConditionalGeneration

    logging.set_verbosity_error()
    set_threads(args)
    model_dir, setting, frames = args.worker[0], args.worker[1], int(args.worker[2])
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    temporal_pool, spatial_pool, _ = SETTINGS[setting]
    model = (
        StormForConditionalGeneration.from_pretrained(
            model_dir, dtype=dtype, temporal_pool_size=temporal_pool, spatial_pool_size=spatial_pool
        )
        .to(device)
        .eval()
    )
    assert model.model.token_compressor.temporal_pool_size == temporal_pool
    assert model.model.token_compressor.spatial_pool_size == spatial_pool
    with torch.no_grad():  # own copies of the weights: none stays a lazily paged-in view of the checkpoint file
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.data = tensor.data.clone()
    inputs = make_inputs(setting, frames, args.image_size, dtype, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = proc_status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    with torch.no_grad():
        sequences = generate(model, inputs, args.new_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = proc_status_kib("VmHWM") * 1024
    generated = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    print(json.dumps({"peak_mb": peak / 2**20, "baseline_mb": baseline / 2**20, "generated": generated}))


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def describe_model(model):
    from storm_hf.accounting import video_tokens

    config, core = model.config, model.model
    vision, text = config.vision_config, config.text_config
    grid = vision.image_size // vision.patch_size
    tokens = video_tokens(config, 1, temporal_pool_size=1, spatial_pool_size=1)
    return (
        f"vision tower {count_parameters(core.vision_tower) / 1e6:.1f}M params (SigLIP-base-like: hidden "
        f"{vision.hidden_size}, {vision.num_hidden_layers} layers, {vision.image_size} px, patch {vision.patch_size} "
        f"-> {grid}x{grid} patches, features of layer {config.vision_feature_layer}); projector "
        f"{count_parameters(core.temporal_projector) / 1e6:.1f}M params (pixel-shuffle {config.downsample_ratio} -> "
        f"{tokens} tokens/frame, Linear {config.downsample_ratio**2 * vision.hidden_size}->{text.hidden_size}, "
        f"{config.mamba_num_layers} bidirectional Mamba layers, expand {config.mamba_expand}, d_state "
        f"{config.mamba_state_size}); language model {count_parameters(core.language_model) / 1e6:.1f}M + LM head "
        f"{count_parameters(model.lm_head) / 1e6:.1f}M params (Qwen2-0.5B-like: hidden {text.hidden_size}, "
        f"{text.num_hidden_layers} layers, {text.num_attention_heads}/{text.num_key_value_heads} heads, vocab "
        f"{text.vocab_size}); attention `{text._attn_implementation}`"
    )


def summarize(samples, args):
    """Per (frames, setting): the minimum of every time over the repeats, and ratios paired within a repeat.

    A ratio (stage sum / e2e, projector / e2e, speed-ups) is taken per repeat -- its two times were measured seconds
    apart, so a change of load between repeats cancels -- and the median over the repeats is reported.
    """
    stage_keys = ("vision", "projector", "compress", "prefill", "decode_total")
    for rows in samples.values():
        for row in rows:
            row["decode_total"] = (args.new_tokens - 1) * row["decode"]
            row["stage_sum"] = sum(row[key] for key in stage_keys)
    summary = {}
    for (frames, setting), rows in samples.items():
        base_rows = samples[frames, BASELINE]
        best = {key: min(row[key] for row in rows) for key in rows[0] if key not in ("generated", "manual")}
        paired = lambda fn: statistics.median(fn(row, base) for row, base in zip(rows, base_rows))  # noqa: E731
        best["stage_ratio"] = paired(lambda row, base: row["stage_sum"] / row["e2e"])
        best["shares"] = [paired(lambda row, base, key=key: row[key] / row["e2e"]) for key in stage_keys]
        best["prefill_speedup"] = paired(lambda row, base: base["prefill"] / row["prefill"])
        best["e2e_speedup"] = paired(lambda row, base: base["e2e"] / row["e2e"])
        best["tokens"] = visual_tokens(setting, frames, args.image_size)
        best["agree"] = all(row["generated"] == row["manual"] for row in rows) and all(
            row["generated"] == rows[0]["generated"] for row in rows
        )
        best["generated"] = rows[0]["generated"]
        best["spread"] = max(row["e2e"] for row in rows) / min(row["e2e"] for row in rows)
        summary[frames, setting] = best
    for (frames, setting), row in summary.items():
        base = summary[frames, BASELINE]
        row["reduction"] = base["tokens"] / row["tokens"]
        row["prompt_reduction"] = (base["tokens"] + TEXT_BEFORE + TEXT_AFTER) / (
            row["tokens"] + TEXT_BEFORE + TEXT_AFTER
        )
    return summary


def render_headline(summary, args) -> str:
    """The headline table: each setting at the largest frame count against `none`."""
    largest = max(args.frames)
    lines = [
        f"| setting ({largest} frames) | visual tokens | prefill s | prefill speed-up | e2e s | e2e speed-up "
        "| projector % of e2e |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setting in args.settings:
        row = summary[largest, setting]
        lines.append(
            f"| {setting} | {row['tokens']} | {row['prefill']:.2f} | {row['prefill_speedup']:.2f}x | {row['e2e']:.2f} "
            f"| {row['e2e_speedup']:.2f}x | {100 * row['shares'][1]:.1f} |"
        )
    return "\n".join(lines)


def render(summary, memory, info, args):
    """The results file's body: setup, the full table, the shares of e2e, the targets and the checks."""
    largest = max(args.frames)
    lines = [
        "Load average (1 min) per frame count, before -> after: "
        + ", ".join(f"{f}: {a:.2f}->{b:.2f}" for f, (a, b) in info["loads"].items())
        + (
            " (the benchmark alone loads one core: no other job ran)."
            if max(max(pair) for pair in info["loads"].values()) < 1.5
            else " (other jobs shared the machine; settings are interleaved, so ratios within a frame count are fair)."
        ),
        "",
        f"Model (random weights, {args.dtype}, device {args.device}, built in {info['build_seconds']:.0f} s): "
        f"{info['model_text']}.",
        "",
        f"Prompt: {TEXT_BEFORE} text tokens, the video's placeholders, {TEXT_AFTER} text tokens; {args.new_tokens} "
        f"new tokens, greedy. Times are the minimum of {args.repeats} repeats; speed-ups, stages/e2e and shares of e2e "
        f"are medians over the repeats of ratios taken within one repeat. All under `torch.no_grad()`, {args.dtype} "
        "weights and activations (the selective scan computes in float32 internally, as in the model).",
        "",
        "Stages (explicit calls): vision = `get_frame_features` on all frames; projector = `temporal_projector` "
        "(vision and projector run before compression, so they are measured once per frame count and repeat and "
        "shared by the settings); compress = `token_compressor` + embedding + placeholder scatter; prefill = "
        "`model(inputs_embeds=..., use_cache=True, logits_to_keep=1)` over the whole prompt "
        "(language model + LM head); "
        f"decode = a manual greedy loop over the prefill's KV cache, per token ({args.new_tokens - 1} steps); "
        "e2e = a separate real `model.generate(...)` call. stages/e2e = (vision + projector + compress + prefill + "
        f"{args.new_tokens - 1} x decode) / e2e. "
        "Token reduction = visual tokens of `none` / visual tokens of the setting. "
        "Peak = "
        + (
            "`torch.cuda.max_memory_allocated` during one `generate` in a fresh subprocess (in brackets: above the "
            "allocation after loading)"
            if args.device.startswith("cuda")
            else "RSS high-water mark (VmHWM) during one `generate` in a fresh subprocess (in brackets: above the RSS "
            "after loading the model and inputs)"
        )
        + ".",
        "",
        "| frames | setting | visual tokens | token reduction | vision s | projector s | compress ms | prefill s "
        "| prefill speed-up | decode ms/token | e2e s | e2e speed-up | stages/e2e | projector % of e2e | peak MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for frames in args.frames:
        for setting in args.settings:
            row = summary[frames, setting]
            mem = memory.get((frames, setting))
            peak = "n/a" if mem is None else f"{mem['peak_mb']:.0f} (+{mem['peak_mb'] - mem['baseline_mb']:.0f})"
            lines.append(
                f"| {frames} | {setting} | {row['tokens']} | {row['reduction']:.1f}x | {row['vision']:.2f} "
                f"| {row['projector']:.3f} | {row['compress'] * 1e3:.1f} | {row['prefill']:.3f} "
                f"| {row['prefill_speedup']:.2f}x | {row['decode'] * 1e3:.1f} | {row['e2e']:.2f} "
                f"| {row['e2e_speedup']:.2f}x | {row['stage_ratio']:.2f} "
                f"| {100 * row['shares'][1]:.1f} | {peak} |"
            )

    lines += ["", f"## Share of e2e at {largest} frames", ""]
    lines += [
        "| setting | vision | projector | compress | prefill | decode | unaccounted |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setting in args.settings:
        row = summary[largest, setting]
        shares = [100 * share for share in row["shares"]] + [100 * (1 - row["stage_ratio"])]
        lines.append(f"| {setting} | " + " | ".join(f"{share:.1f}%" for share in shares) + " |")

    lines += ["", "## Targets", ""]
    lines.append(
        "1. LLM prefill speed-up within 10% of the token reduction ratio (>= 0.9 x reduction, e.g. >= 3.6x for 4x). "
        "Prompt reduction counts the text tokens too, which no compression removes."
    )
    lines.append(
        "`prefill / decode step` is the prefill time in decode steps: near 1, the forward is bound by reading the "
        "weights once, not by the number of tokens, and cannot speed up further with fewer tokens."
    )
    lines += [
        "",
        "| frames | setting | token reduction | prompt reduction | prefill speed-up | needed | met "
        "| prefill / decode step |",
    ]
    lines.append("|---:|---|---:|---:|---:|---:|---|---:|")
    for frames in args.frames:
        for setting in args.settings:
            if setting == BASELINE:
                continue
            row = summary[frames, setting]
            needed = 0.9 * row["reduction"]
            met = "yes" if row["prefill_speedup"] >= needed else "**no**"
            lines.append(
                f"| {frames} | {setting} | {row['reduction']:.1f}x | {row['prompt_reduction']:.1f}x "
                f"| {row['prefill_speedup']:.2f}x | {needed:.2f}x | {met} | {row['prefill'] / row['decode']:.1f} |"
            )
    lines += ["", f"2. Projector <= 5% of end-to-end time at {largest} frames (the paper: <= 3%).", ""]
    for setting in args.settings:
        row = summary[largest, setting]
        share = 100 * row["shares"][1]
        lines.append(f"- {setting}: {share:.1f}% -> {'met' if share <= 5 else '**missed**'}")

    lines += ["", "## Checks", ""]
    agree = all(row["agree"] for row in summary.values())
    lines.append(
        f"- Manual prefill + KV-cache decode loop generates the same tokens as `generate` in every repeat: "
        f"{'yes' if agree else '**no**: ' + ', '.join(f'{f}/{s}' for (f, s), r in summary.items() if not r['agree'])}."
    )
    lines.append(
        "- `generate` runs the vision tower once per call (prefill only): asserted with a forward hook on the tower."
    )
    if memory:
        same = [key for key, mem in memory.items() if mem["generated"] == summary[key]["generated"]]
        lines.append(
            "- Memory workers (weights reloaded with the setting's pooling in the config) generate the same tokens "
            f"as the attribute-switched model: {len(same)}/{len(memory)}"
            + (
                "."
                if len(same) == len(memory)
                else f" (differ: {', '.join(f'{f}/{s}' for f, s in memory if (f, s) not in same)})."
            )
        )
    spread = max(row["spread"] for row in summary.values())
    lines.append(f"- Largest e2e max/min over repeats of one cell: {spread:.2f} (noise from the shared machine).")
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    if args.worker:
        return run_worker(args)
    run = start_run()
    samples, memory, info = run_benchmark(args)
    summary = summarize(samples, args)
    data = {
        "settings": {name: SETTINGS[name] for name in args.settings},
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "device": args.device,
        **info,
        "cells": [
            {"frames": frames, "setting": setting, **row, "memory": memory.get((frames, setting))}
            for (frames, setting), row in summary.items()
        ],
    }
    path = write_results(
        args.out.stem,
        "# Token compression: per-stage cost of `generate`",
        render(summary, memory, info, args),
        data,
        run,
        headline=render_headline(summary, args),
        results_dir=args.out.parent,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
