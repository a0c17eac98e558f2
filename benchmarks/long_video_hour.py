"""Part 2 of the long-video benchmark: a 1-hour video answered end to end through the `video-text-to-text` pipeline
with `max_visual_tokens`, on `common.mid_size_config` (random weights).

Run through `python benchmarks/bench_long_video.py --part hour`. In this process: write a synthetic 1-hour video
(h264, `--hour-fps` frames per second, `--hour-image-size` px), then time (1) the processor alone on it (decode +
sample + resize, and the frames / stride / tokens the budget policy chose) and (2) the pipeline call, split with
forward hooks (public torch API) into vision tower, temporal projector, token compressor, LLM prefill (the first
language-model call) and decoding (the later ones). Peak memory is the process's VmHWM, the whole process: model
weights, pixels, activations and KV cache. Target of issue 9: the hour answered within 8 GB peak RSS.
"""

import time
from pathlib import Path

from common import mid_size_config, moving_bar_frame, proc_status_kib, write_video


QUESTION = "What happens in this video?"


def build_tokenizer():
    """A byte-level Qwen2 tokenizer (no merges) with ChatML and the Qwen2-VL vision special tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from storm_hf.conversion.processor import VISION_SPECIAL_TOKENS

    vocab = {character: index for index, character in enumerate(bytes_to_unicode().values())}
    return Qwen2Tokenizer(
        vocab=vocab, merges=[], extra_special_tokens=["<|im_start|>", "<|im_end|>", *VISION_SPECIAL_TOKENS]
    )


class StageTimer:
    """Wall time spent inside modules, from forward pre-hooks and hooks: `seconds[name]` sums every call,
    `calls[name]` counts them; `first[name]` is the first call's time."""

    def __init__(self, modules: dict):
        self.seconds = dict.fromkeys(modules, 0.0)
        self.calls = dict.fromkeys(modules, 0)
        self.first = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(self._start(name))
            module.register_forward_hook(self._stop(name))

    def _start(self, name):
        def hook(module, args):
            module._started = time.perf_counter()

        return hook

    def _stop(self, name):
        def hook(module, args, output):
            elapsed = time.perf_counter() - module._started
            self.seconds[name] += elapsed
            self.calls[name] += 1
            self.first.setdefault(name, elapsed)

        return hook


def run_hour(args, work_dir: Path) -> dict:
    """Builds the model, writes the video, answers it once; returns the measurements."""
    import torch
    from transformers import pipeline

    import storm_hf
    from storm_hf.accounting import kv_cache_bytes
    from storm_hf.conversion.processor import build_processor

    tokenizer = build_tokenizer()
    config = mid_size_config(args.hour_image_size)
    config.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    config.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    config.text_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    model = storm_hf.StormForConditionalGeneration(config).eval()
    processor = build_processor(tokenizer, config)
    after_model = proc_status_kib("VmRSS") / 2**20

    video = work_dir / "hour.mp4"
    started = time.perf_counter()
    frames = (moving_bar_frame(index, args.hour_image_size) for index in range(args.hour_seconds * args.hour_fps))
    write_video(video, frames, args.hour_fps, codec="h264", options={"preset": "ultrafast"})
    write_seconds = time.perf_counter() - started

    budget = {"max_visual_tokens": args.max_visual_tokens}
    chat = [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": QUESTION}]}]
    started = time.perf_counter()
    processed = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs=budget
    )
    processor_seconds = time.perf_counter() - started
    num_frames = int(processed["video_num_frames"].sum())
    stride = int(processed["temporal_sampling_stride"][0])
    visual_tokens = int((processed["input_ids"] == config.video_token_id).sum())
    prompt_tokens = processed["input_ids"].shape[1]
    del processed

    core = model.model
    timer = StageTimer(
        {
            "vision tower": core.vision_tower,
            "temporal projector": core.temporal_projector,
            "token compressor": core.token_compressor,
            "language model": core.language_model,
        }
    )
    pipe = pipeline("video-text-to-text", model=model, processor=processor)
    started = time.perf_counter()
    answer = pipe(text=chat, processor_kwargs=budget, max_new_tokens=args.new_tokens, return_full_text=False)
    pipeline_seconds = time.perf_counter() - started
    llm_calls = timer.calls["language model"]
    return {
        "video": {"seconds": args.hour_seconds, "fps": args.hour_fps, "size": args.hour_image_size},
        "write_video_s": write_seconds,
        "max_visual_tokens": args.max_visual_tokens,
        "chosen_frames": num_frames,
        "chosen_stride": stride,
        "visual_tokens": visual_tokens,
        "prompt_tokens": prompt_tokens,
        "kv_cache_mb_float32": kv_cache_bytes(config, prompt_tokens, dtype_bytes=4) / 2**20,
        "processor_s": processor_seconds,
        "pipeline_s": pipeline_seconds,
        "stage_s": {
            "vision tower": timer.seconds["vision tower"],
            "temporal projector": timer.seconds["temporal projector"],
            "token compressor": timer.seconds["token compressor"],
            "LLM prefill": timer.first.get("language model", 0.0),
            "LLM decoding": timer.seconds["language model"] - timer.first.get("language model", 0.0),
        },
        "llm_calls": llm_calls,
        "rss_after_model_gb": after_model,
        "peak_rss_gb": proc_status_kib("VmHWM") / 2**20,
        "answer_tokens": args.new_tokens,
        "answer": answer[0]["generated_text"] if isinstance(answer, list) else answer["generated_text"],
    }


def render_hour(result: dict) -> tuple[str, str]:
    """The headline (what the budget policy kept, end-to-end time, peak RSS against the target) and the body (setup,
    time per stage) of the 1-hour run."""
    video, stages = result["video"], result["stage_s"]
    rest = result["pipeline_s"] - sum(stages.values())
    verdict = "met" if result["peak_rss_gb"] <= 8 else "NOT met"
    headline = [
        "| video | frames kept (stride) | visual tokens | pipeline s | peak RSS GB | target <= 8 GB |",
        "|---|---:|---:|---:|---:|---|",
        f"| {video['seconds']} s at {video['fps']} fps, {video['size']} px | {result['chosen_frames']} "
        f"({result['chosen_stride']}) | {result['visual_tokens']} | {result['pipeline_s']:.0f} "
        f"| {result['peak_rss_gb']:.2f} | {verdict} |",
    ]
    body = [
        f"A synthetic {video['seconds']} s video at {video['fps']} fps ({video['seconds'] * video['fps']} frames, "
        f"{video['size']}x{video['size']} h264, written in {result['write_video_s']:.0f} s), answered by "
        f'`pipeline("video-text-to-text")` with `processor_kwargs={{"max_visual_tokens": '
        f"{result['max_visual_tokens']}}}` and {result['answer_tokens']} new tokens, on `common.mid_size_config"
        f"({video['size']})` (random weights, float32). Times are noisy on a loaded machine; memory is not.",
        "",
        f"The budget policy chose **{result['chosen_frames']} frames at temporal sampling stride "
        f"{result['chosen_stride']}**: {result['visual_tokens']} visual tokens (<= {result['max_visual_tokens']}), a "
        f"{result['prompt_tokens']}-token prompt (KV cache {result['kv_cache_mb_float32']:.0f} MiB in float32).",
        "",
        "| stage | seconds |",
        "|---|---:|",
        f"| processor alone (decode + sample + resize), measured separately | {result['processor_s']:.1f} |",
        f"| pipeline end to end | {result['pipeline_s']:.1f} |",
        *(f"| - {name} | {seconds:.1f} |" for name, seconds in stages.items()),
        f"| - the rest (decode + resize inside the pipeline, tokenization, generate's bookkeeping) | {rest:.1f} |",
        "",
        f"Peak RSS of the whole process (model weights included; {result['rss_after_model_gb']:.2f} GB after building "
        f"the model): **{result['peak_rss_gb']:.2f} GB**; target <= 8 GB: **{verdict}**.",
    ]
    return "\n".join(headline), "\n".join(body)
