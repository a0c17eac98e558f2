"""STORM against its peers at matched size: LLaVA-OneVision and Qwen2-VL built from transformers' own classes.

Every arm is a random model of the same parts: a SigLIP-base-shaped vision tower (width 768, MLP 3072, 12 heads, the 11
layers STORM's feature layer -2 uses; `--vision so400m`: the paper's SigLIP-so400m at 448 px, 26 layers) and a
Qwen2-shaped LLM (`--llm 0.5b`, `1.5b`, `7b`). The parameter count of each part is printed and recorded, and the
vision towers and LLMs must be within 5% of STORM's. Every vision tower receives the same pixels: `--frames` frames of
`image_size` px, patch 16 (so400m: patch 14); Qwen2-VL's processor layout (2-frame tubelets, 2x2 merge) is made from
the same frames by its own video processor's `patchify`.

Arms (visual tokens by each model's documented formula, g = patches per side, F = frames):
  STORM none                  temporal_pool_size=1: F * (g/2)^2
  STORM T.Pool                temporal_pool_size=4: ceil(F/4) * (g/2)^2
  STORM T.Pool+T.Sampling     ... and temporal_sampling_stride=2: ceil(ceil(F/4)/2) * (g/2)^2
  STORM T.Pool+S.Pool         ... and spatial_pool_size=2: ceil(F/4) * (g/4)^2
  LLaVA-OneVision             vision feature layer -1 of the 11-layer tower, 2-layer MLP projector, 2x2 bilinear
                              pooling, one newline token: F * ceil(g/2)^2 + 1
  Qwen2-VL                    its vision transformer (same width/depth/MLP, 2-frame tubelets) and 2x2 patch merger:
                              ceil(F/2) * (g/2)^2
  LLM alone                   the same LLM as `AutoModelForCausalLM`, a text prompt as long as STORM T.Pool's
The prompt is 20 text tokens, the visual placeholders, 16 text tokens. Each model's own placeholder check (the
number of placeholders must equal the number of visual features) enforces the formula.

Per (arm, frames), `torch.no_grad()`, in one fresh process per arm (the frame counts run in that process in order):
  prefill    `generate` up to its first token (vision included: time to first token), split with forward hooks
             into vision tower /
             projector or merger (STORM: pixel-shuffle Linear + Mamba layers + compressor; LLaVA-OneVision:
             the MLP projector, its pooling counted as other; Qwen2-VL: the merger, taken out of its visual module) /
             LLM (the language model body) / other (embedding, merge, LM head, pooling)
  decode     `--new-tokens` greedy tokens; ms per token is the median time between consecutive tokens after the first
  memory     peak resident-set growth during the generate call (VmHWM reset before it)
  video      a check that the video reaches the model: the last-position logits of a 4-frame prompt change when its
             pixels change
Wall and process CPU times (all threads) are recorded, in total and per part; the table shows CPU times, the steadier
number on a shared machine (with one thread, the time the arm actually ran), and the prefill's wall time. The speed of
each STORM arm against a peer is the peer's prefill CPU time over the arm's at the same frames (above 1: STORM faster).

    python benchmarks/bench_peers.py --frames 16 32 64 --llm 0.5b                     # CPU, float32
    python benchmarks/bench_peers.py --device cuda --dtype bfloat16 --vision so400m --llm 7b --frames 16 32 64 128

Writes benchmarks/results/peers_<vision>_<llm>.md/.json and a PNG plot (prefill time vs frames, one line per arm).
"""

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, proc_status_kib, start_run, write_results  # noqa: E402


VISION_SHAPES = {  # SigLIP towers, the layers STORM's feature layer -2 uses
    "siglip-base": dict(
        hidden_size=768, intermediate_size=3072, layers_used=11, num_attention_heads=12, patch=16, px=256
    ),
    "so400m": dict(hidden_size=1152, intermediate_size=4304, layers_used=26, num_attention_heads=16, patch=14, px=448),
    "tiny": dict(hidden_size=32, intermediate_size=128, layers_used=2, num_attention_heads=2, patch=16, px=64),
}
LLM_SHAPES = {  # Qwen2 / Qwen2.5 language models
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, kv=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, kv=2),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, kv=4),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, kv=2),
}
STORM_ARMS = {  # name: (temporal_pool_size, spatial_pool_size, temporal_sampling_stride)
    "STORM none": (1, 1, 1),
    "STORM T.Pool": (4, 1, 1),
    "STORM T.Pool+T.Sampling": (4, 1, 2),
    "STORM T.Pool+S.Pool": (4, 2, 1),
}
ARMS = (*STORM_ARMS, "LLaVA-OneVision", "Qwen2-VL", "LLM alone")
RUN_ORDER = (  # the headline comparison first
    "STORM T.Pool",
    "LLaVA-OneVision",
    "Qwen2-VL",
    "LLM alone",
    "STORM none",
    "STORM T.Pool+T.Sampling",
    "STORM T.Pool+S.Pool",
)
VOCAB, VIDEO_TOKEN_ID, IMAGE_TOKEN_ID, PAD_TOKEN_ID = 151936, 151656, 151655, 0
VISION_START_ID, VISION_END_ID = 151652, 151653
TEXT_BEFORE, TEXT_AFTER = 20, 16
CHECK_FRAMES = 4
PARTS = ("vision", "projector", "llm")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--llm", choices=list(LLM_SHAPES), default="0.5b")
    parser.add_argument("--vision", choices=list(VISION_SHAPES), default="siglip-base")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(RUN_ORDER), help="in the order they run")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per generate (>= 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--name", help="results file name (default peers_<vision>_<llm>)")
    parser.add_argument(
        "--storm-config",
        nargs="+",
        default=[],
        metavar="KEY=JSON",
        help="StormConfig settings of the STORM arms, e.g. mamba_inference_chunk_length=null vision_batch_size=64",
    )
    parser.add_argument(
        "--vision-attention",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="attention implementation of every arm's vision tower (the LLMs keep sdpa)",
    )
    parser.add_argument("--worker", metavar="ARM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.new_tokens < 3:
        parser.error("--new-tokens must be >= 3 (a prefill token, then decode steps to time)")
    args.name = args.name or f"peers_{args.vision}_{args.llm}"
    try:
        args.storm_config = dict(_setting(item) for item in args.storm_config)
    except ValueError as error:
        parser.error(f"--storm-config: {error}")
    return args


def _setting(item: str) -> tuple[str, object]:
    """`KEY=JSON` -> (KEY, value), e.g. `vision_batch_size=64`, `mamba_inference_chunk_length=null`."""
    key, separator, value = item.partition("=")
    if not separator:
        raise ValueError(f"{item!r} is not KEY=JSON")
    return key, json.loads(value)


# ---------------------------------------------------------------------------------------------------- models


def text_config(args, **overrides) -> dict:
    shape = LLM_SHAPES[args.llm]
    settings = dict(
        model_type="qwen2",
        vocab_size=VOCAB,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["kv"],
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=None,
        eos_token_id=None,  # random weights: never stop early, every call generates exactly --new-tokens
        tie_word_embeddings=False,
    )
    return {**settings, **overrides}


def siglip_config(args, num_hidden_layers: int) -> dict:
    shape = VISION_SHAPES[args.vision]
    return dict(
        model_type="siglip_vision_model",
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=shape["num_attention_heads"],
        image_size=shape["px"],
        patch_size=shape["patch"],
        vision_use_head=False,
    )


def build(arm: str, args):
    """The arm's random model and its parts `{part: module}` (the projector part may be several modules)."""
    from transformers import (
        AutoModelForCausalLM,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    from storm_hf import StormConfig, StormForConditionalGeneration

    shape = VISION_SHAPES[args.vision]
    if arm in STORM_ARMS:
        temporal_pool, spatial_pool, stride = STORM_ARMS[arm]
        config = StormConfig(  # the tower describes layers_used + 1 layers; feature layer -2 builds layers_used
            vision_config=siglip_config(args, shape["layers_used"] + 1),
            text_config=text_config(args),
            image_token_id=IMAGE_TOKEN_ID,
            video_token_id=VIDEO_TOKEN_ID,
            temporal_pool_size=temporal_pool,
            spatial_pool_size=spatial_pool,
            temporal_sampling_stride=stride,
            **args.storm_config,
        )
        model = StormForConditionalGeneration(config)
        core = model.model
        parts = {
            "vision": [core.vision_tower],
            "projector": [core.temporal_projector.linear, *core.temporal_projector.layers, core.token_compressor],
            "llm": [core.language_model],
        }
        counted = {"vision": [core.vision_tower], "projector": [core.temporal_projector], "llm": parts["llm"]}
    elif arm == "LLaVA-OneVision":
        config = LlavaOnevisionConfig(
            vision_config=siglip_config(args, shape["layers_used"]),
            text_config=text_config(args),
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            video_token_id=VIDEO_TOKEN_ID,
            image_token_id=IMAGE_TOKEN_ID,
        )
        model = LlavaOnevisionForConditionalGeneration(config)
        core = model.model
        parts = {"vision": [core.vision_tower], "projector": [core.multi_modal_projector], "llm": [core.language_model]}
        counted = parts
    elif arm == "Qwen2-VL":
        config = Qwen2VLConfig(
            vision_config=dict(
                depth=shape["layers_used"],
                embed_dim=shape["hidden_size"],
                hidden_size=LLM_SHAPES[args.llm]["hidden_size"],
                mlp_ratio=round(shape["intermediate_size"] / shape["hidden_size"]),  # an int (so400m: 4, +5% MLP)
                num_heads=shape["num_attention_heads"],
                patch_size=shape["patch"],
                spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            text_config=text_config(args, model_type="qwen2_vl_text", rope_parameters=mrope_parameters(args)),
            video_token_id=VIDEO_TOKEN_ID,
            image_token_id=IMAGE_TOKEN_ID,
            vision_start_token_id=VISION_START_ID,
            vision_end_token_id=VISION_END_ID,
        )
        model = Qwen2VLForConditionalGeneration(config)
        core = model.model
        parts = {"vision": [core.visual], "projector": [core.visual.merger], "llm": [core.language_model]}
        counted = parts
    else:
        model = AutoModelForCausalLM.from_config(_text_config_object(args))
        parts = {"llm": [model.model]}
        counted = parts
    counts = {
        part: sum(p.numel() for module in modules for p in module.parameters()) for part, modules in counted.items()
    }
    if arm == "Qwen2-VL":  # the merger sits inside the visual module
        counts["vision"] -= counts["projector"]
    counts["llm"] += model.lm_head.weight.numel()
    if arm != "LLM alone":
        model.set_attn_implementation({"vision_config": args.vision_attention})
    return model.eval(), parts, counts


def mrope_parameters(args) -> dict:
    """Qwen2-VL's multimodal RoPE for the LLM's head size: time / height / width sections in Qwen2-VL's 2:3:3 ratio
    of the rotary half (16 / 24 / 24 for its 128-wide heads)."""
    shape = LLM_SHAPES[args.llm]
    half = shape["hidden_size"] // shape["num_attention_heads"] // 2
    sections = [half // 4, 3 * half // 8, 3 * half // 8]
    sections[0] += half - sum(sections)
    return {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": sections}


def _text_config_object(args):
    from transformers import AutoConfig

    settings = text_config(args)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def visual_tokens(arm: str, frames: int, args) -> int:
    """Visual tokens of `frames` frames by each model's documented formula."""
    grid = VISION_SHAPES[args.vision]["px"] // VISION_SHAPES[args.vision]["patch"]
    if arm in STORM_ARMS:
        temporal_pool, spatial_pool, stride = STORM_ARMS[arm]
        return math.ceil(math.ceil(frames / temporal_pool) / stride) * (math.ceil(grid / 2) // spatial_pool) ** 2
    if arm == "LLaVA-OneVision":
        return frames * math.ceil(grid / 2) ** 2 + 1
    if arm == "Qwen2-VL":
        return math.ceil(frames / 2) * (grid // 2) ** 2
    return visual_tokens("STORM T.Pool", frames, args)  # LLM alone: as many text tokens as STORM T.Pool's


def make_inputs(arm: str, frames: int, args, seed: int) -> dict:
    """The arm's model inputs for one prompt about `frames` random frames (the same pixels for every arm)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 150000, (TEXT_BEFORE + TEXT_AFTER,), generator=generator)
    px = VISION_SHAPES[args.vision]["px"]
    pixels = torch.randn(1, frames, 3, px, px, generator=generator)
    placeholders = visual_tokens(arm, frames, args)
    if arm == "LLM alone":
        ids = torch.randint(1, 150000, (TEXT_BEFORE + placeholders + TEXT_AFTER,), generator=generator)[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    video = [VIDEO_TOKEN_ID] * placeholders
    if arm == "Qwen2-VL":
        video = [VISION_START_ID, *video, VISION_END_ID]
    ids = torch.tensor([*text[:TEXT_BEFORE].tolist(), *video, *text[TEXT_BEFORE:].tolist()])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if arm in STORM_ARMS:
        inputs["pixel_values_videos"] = pixels
        inputs["video_num_frames"] = torch.tensor([[frames]])
    elif arm == "LLaVA-OneVision":
        inputs["pixel_values_videos"] = pixels
    else:
        from transformers import Qwen2VLVideoProcessor

        patch = VISION_SHAPES[args.vision]["patch"]
        patches, grid_t, grid_h, grid_w = Qwen2VLVideoProcessor().patchify(pixels, patch, 2, 2)
        inputs["pixel_values_videos"] = patches[0]
        inputs["video_grid_thw"] = torch.tensor([[grid_t, grid_h, grid_w]])
        inputs["mm_token_type_ids"] = (ids == VIDEO_TOKEN_ID).int() * 2
    return inputs


# ---------------------------------------------------------------------------------------------------- measuring


class PartTimer:
    """Sums the wall and process CPU time spent inside the modules of each part (forward hooks), while `active`."""

    def __init__(self, parts: dict, synchronize):
        self.synchronize = synchronize
        self.active = False
        self.seconds = dict.fromkeys(parts, 0.0)
        self.cpu_seconds = dict.fromkeys(parts, 0.0)
        self.started = {}
        for part, modules in parts.items():
            for module in modules:
                module.register_forward_pre_hook(self._enter(part, module))
                module.register_forward_hook(self._leave(part, module))

    def _enter(self, part, module):
        def hook(*_):
            if self.active:
                self.synchronize()
                self.started[id(module)] = (time.perf_counter(), time.process_time())

        return hook

    def _leave(self, part, module):
        def hook(*_):
            if self.active and id(module) in self.started:
                self.synchronize()
                wall, cpu = self.started.pop(id(module))
                self.seconds[part] += time.perf_counter() - wall
                self.cpu_seconds[part] += time.process_time() - cpu

        return hook


def run_worker(args):
    """One arm at every frame count in this fresh process; prints one JSON line per frame count."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    arm = args.worker
    torch.manual_seed(0)
    model, parts, counts = build(arm, args)
    model.to(device, dtype)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timer = PartTimer(parts, synchronize)

    class TokenClock(StoppingCriteria):
        """Records (wall, CPU) after each generated token; never stops."""

        def __init__(self):
            self.marks = []

        def __call__(self, input_ids, scores, **kwargs):
            synchronize()
            self.marks.append((time.perf_counter(), time.process_time()))
            timer.active = False  # the prefill ends with the first token
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def on_device(inputs):
        return {
            name: value.to(device, dtype) if value.is_floating_point() else value.to(device)
            for name, value in inputs.items()
        }

    def generate(inputs, clock):
        return model.generate(
            **inputs,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=PAD_TOKEN_ID,
            stopping_criteria=StoppingCriteriaList([clock]),
        )

    with torch.no_grad():
        video_reaches = video_reaches_model(arm, model, args, on_device)
        generate(on_device(make_inputs(arm, CHECK_FRAMES, args, seed=3)), TokenClock())  # warm-up
        for frames in args.frames:
            inputs = on_device(make_inputs(arm, frames, args, seed=frames))
            clock = TokenClock()
            timer.seconds, timer.cpu_seconds = dict.fromkeys(timer.seconds, 0.0), dict.fromkeys(timer.seconds, 0.0)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                memory_before = torch.cuda.memory_allocated(device)
            else:
                memory_before = proc_status_kib("VmRSS") * 1024
                with open("/proc/self/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            timer.active = True
            synchronize()
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            generate(inputs, clock)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) - memory_before
            else:
                peak = proc_status_kib("VmHWM") * 1024 - memory_before
            steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(clock.marks, clock.marks[1:])]
            prefill_s = clock.marks[0][0] - wall_start
            row = {
                "arm": arm,
                "frames": frames,
                "visual_tokens": visual_tokens(arm, frames, args) if arm != "LLM alone" else 0,
                "prompt_tokens": inputs["input_ids"].shape[1],
                "prefill_s": prefill_s,
                "prefill_cpu_s": clock.marks[0][1] - cpu_start,
                "split_cpu_s": prefill_split(timer.cpu_seconds, clock.marks[0][1] - cpu_start, arm),
                "split_s": prefill_split(timer.seconds, prefill_s, arm),
                "decode_ms": statistics.median(step[0] for step in steps) * 1e3,
                "decode_cpu_ms": statistics.median(step[1] for step in steps) * 1e3,
                "peak_mib": peak / 2**20,
                "parameters": counts,
                "video_reaches_model": video_reaches,
            }
            print(json.dumps(row), flush=True)


def prefill_split(seconds: dict, prefill_s: float, arm: str) -> dict:
    """Seconds of the prefill in each part, and `other`: the rest of it (input preparation, embedding, merge, pooling,
    LM head, choosing the first token)."""
    split = dict(seconds)
    if arm == "Qwen2-VL":
        split["vision"] -= split["projector"]  # the merger runs inside the visual module
    split["other"] = prefill_s - sum(split.values())
    return split


def video_reaches_model(arm: str, model, args, on_device) -> bool | None:
    """Whether the last-position logits of a 4-frame prompt change when its pixels change (None: no video)."""
    if arm == "LLM alone":
        return None
    first, second = (on_device(make_inputs(arm, CHECK_FRAMES, args, seed=seed)) for seed in (1, 2))
    second["input_ids"] = first["input_ids"]  # the same text: only the pixels differ
    logits = [model(**inputs, logits_to_keep=1).logits[0, -1].float() for inputs in (first, second)]
    return bool((logits[0] - logits[1]).abs().max() > 1e-4 * logits[0].abs().max())


def measure(args):
    """Runs each arm's worker; yields the rows of all arms measured so far after each arm."""
    rows = []
    for arm in args.arms:
        command = [sys.executable, __file__, "--worker", arm, "--frames", *map(str, args.frames)]
        command += ["--llm", args.llm, "--vision", args.vision, "--new-tokens", str(args.new_tokens)]
        command += ["--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
        command += ["--vision-attention", args.vision_attention]
        if args.storm_config:
            command += ["--storm-config", *(f"{key}={json.dumps(value)}" for key, value in args.storm_config.items())]
        load = os.getloadavg()[0]
        worker = subprocess.run(command, capture_output=True, text=True)
        arm_rows = [json.loads(line) for line in worker.stdout.splitlines() if line.startswith("{")]
        for row in arm_rows:
            row["load"] = round(max(load, os.getloadavg()[0]), 1)
            print(json.dumps(row), file=sys.stderr, flush=True)
        if worker.returncode != 0:
            raise RuntimeError(f"arm {arm} failed:\n{worker.stderr[-4000:]}")
        rows += arm_rows
        yield rows


# ---------------------------------------------------------------------------------------------------- reporting


def check_matched_parts(rows: list[dict], args) -> list[str]:
    """The vision towers and LLMs of every arm against STORM's (within 5%; not checked at the `tiny` smoke-test shapes,
    where Qwen2-VL's tubelet patch embedding outweighs a layer); returns the report lines."""
    counts = {row["arm"]: row["parameters"] for row in rows}
    reference = next((counts[arm] for arm in counts if arm in STORM_ARMS), None)
    lines = ["| arm | vision tower | projector / merger | LLM (with LM head) |", "|---|---:|---:|---:|"]
    for arm, parts in counts.items():
        cells = [f"{parts[part] / 1e6:.1f}M" if part in parts else "-" for part in ("vision", "projector", "llm")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        for part in ("vision", "llm"):
            mismatch = reference and part in parts and abs(parts[part] / reference[part] - 1) > 0.05
            if mismatch and args.vision != "tiny":
                raise SystemExit(f"{arm}'s {part} has {parts[part]} parameters, STORM's {reference[part]}: not matched")
    return lines


def render(rows: list[dict], args) -> tuple[str, str]:
    header = (
        "| arm | frames | visual tokens | prefill CPU s (vision / projector / LLM / other) | projector share "
        "| prefill speed vs LLaVA-OneVision / Qwen2-VL | prefill wall s | decode ms/token CPU (wall) | peak MiB "
        "| video reaches model |"
    )
    lines = [header, "|---|---:|---:|---|---:|---|---:|---:|---:|---|"]
    prefill = {(row["arm"], row["frames"]): row["prefill_cpu_s"] for row in rows}
    for row in sorted(rows, key=lambda row: (row["frames"], ARMS.index(row["arm"]))):
        split = row["split_cpu_s"]
        parts = " / ".join(f"{split.get(part, 0.0):.2f}" for part in (*PARTS, "other"))
        share = f"{split['projector'] / row['prefill_cpu_s']:.1%}" if "projector" in split else "-"
        reaches = {True: "yes", False: "**NO**", None: "-"}[row["video_reaches_model"]]
        speed = " / ".join(
            f"{prefill[peer, row['frames']] / row['prefill_cpu_s']:.2f}x" if (peer, row["frames"]) in prefill else "-"
            for peer in ("LLaVA-OneVision", "Qwen2-VL")
        )
        speed = speed if row["arm"] in STORM_ARMS else "-"
        lines.append(
            f"| {row['arm']} | {row['frames']} | {row['visual_tokens']} | {row['prefill_cpu_s']:.2f} ({parts}) "
            f"| {share} | {speed} | {row['prefill_s']:.2f} | {row['decode_cpu_ms']:.0f} ({row['decode_ms']:.0f}) "
            f"| {row['peak_mib']:.0f} | {reaches} |"
        )
    loads = [row["load"] for row in rows]
    body = [
        f"Vision `{args.vision}` ({VISION_SHAPES[args.vision]['px']} px, patch {VISION_SHAPES[args.vision]['patch']}), "
        f"LLM `{args.llm}`-shaped Qwen2, random weights, {args.dtype} on {args.device}, "
        f"{args.threads or 'default'} torch thread(s) per arm, {args.new_tokens} greedy tokens per generate, "
        f"{args.vision_attention} attention in the vision towers, STORM settings "
        f"{json.dumps(args.storm_config) if args.storm_config else 'the StormConfig defaults'}. "
        f"Prompt: {TEXT_BEFORE} text tokens, the visual placeholders, {TEXT_AFTER} text tokens. "
        "One process per arm; 1-minute load average during the arms "
        f"{min(loads)}-{max(loads)}.",
        "",
        "Parameters per part (vision towers and LLMs checked equal to STORM's within 5%):",
        "",
        *check_matched_parts(rows, args),
        "",
        "![prefill vs frames](" + f"{args.name}.png)",
    ]
    return "\n".join(lines), "\n".join(body)


def plot(rows: list[dict], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arm in ARMS:
        points = sorted((row["frames"], row["prefill_cpu_s"]) for row in rows if row["arm"] == arm)
        if points:
            axis.plot(*zip(*points), marker="o", label=arm, linestyle="--" if arm == "LLM alone" else "-")
    frames = sorted({row["frames"] for row in rows})
    axis.set(xlabel="frames", ylabel="prefill CPU s (to the first token)", yscale="log")
    axis.set_title(title, fontsize=9)
    axis.set_xscale("log", base=2)
    axis.set_xticks(frames, [str(f) for f in frames])
    axis.xaxis.set_minor_locator(NullLocator())
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    run = start_run([shlex.quote(arg) for arg in sys.argv[1:]])
    title = f"STORM vs LLaVA-OneVision vs Qwen2-VL ({args.vision}, {args.llm} LLM, {args.device}, {args.dtype})"
    settings = {
        name: getattr(args, name)
        for name in ("frames", "llm", "vision", "device", "dtype", "threads", "vision_attention", "storm_config")
    }
    for rows in measure(args):  # the results files are rewritten after each arm: a cut-short run keeps its arms
        headline, body = render(rows, args)
        done = {row["arm"] for row in rows}
        if len(done) < len(args.arms):
            body += f"\n\nPartial: {len(done)} of {len(args.arms)} arms measured so far."
        plot(rows, RESULTS / f"{args.name}.png", title)
        data = {"rows": rows, "settings": settings}
        path = write_results(args.name, f"# {title}", body, data, dict(run), headline=headline)
    print(path.read_text())


if __name__ == "__main__":
    main()
