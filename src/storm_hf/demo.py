"""`storm-hf demo`: a question about a freshly rendered clip, answered by the small STORM shipped in the package.

The bundled checkpoint (`storm_hf/demo_checkpoint/`, made by `examples/train_temporal_task.py`) is a ~1M-parameter
STORM trained on the synthetic temporal task of `storm_hf.synthetic`, whose order-dependent questions (direction, which
colour first, does it turn back, how many crossings) cannot be answered from any single frame or from an unordered bag
of frames. The demo:

1. renders a clip the model has never seen (a new random seed) and writes it as an mp4;
2. answers the clip's question, reading the video file like any other;
3. shows the visual tokens and latency with the model's temporal pooling (the compression it was trained with) and
   without it (no pooling: every frame's tokens reach the LLM);
4. measures accuracy on a fresh set of clips, against what a model that sees an unordered bag of frames can reach.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


BUNDLED_CHECKPOINT = Path(__file__).parent / "demo_checkpoint"


def bundled_checkpoint() -> Path:
    if not (BUNDLED_CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"The demo checkpoint is missing from the package ({BUNDLED_CHECKPOINT}); reinstall storm-hf, or pass "
            "--checkpoint with a model trained on storm_hf.synthetic."
        )
    return BUNDLED_CHECKPOINT


def load(checkpoint: Path, **config_overrides):
    """The model (float32, CPU) and processor of `checkpoint`; pooling overrides go to both."""
    from transformers import AutoProcessor

    from .modeling import StormForConditionalGeneration

    model = StormForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, **config_overrides).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, **config_overrides)  # the video processor counts with them
    return model, processor


def answer(model, processor, video: Path, question: str, max_new_tokens: int = 3) -> tuple[str, int, float]:
    """Greedy answer, the number of visual tokens, and the latency (decode + encode + prefill + generation), in s."""
    from .synthetic import make_messages

    started = time.perf_counter()
    inputs = processor.apply_chat_template(
        make_messages(video, question), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs.pop("video_metadata", None)
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
        )
    latency = time.perf_counter() - started
    text = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return text, int((inputs["input_ids"] == processor.video_token_id).sum()), latency


def median_latency(model, processor, video: Path, question: str, repeats: int = 5) -> float:
    answer(model, processor, video, question)  # warm-up
    return statistics.median(answer(model, processor, video, question)[2] for _ in range(repeats))


def paper_scale_line(pool: int, num_frames: int = 128) -> str:
    """The same compression at the paper's scale: visual tokens and LLM KV cache of the 7B model (`storm-hf info`)."""
    from .accounting import kv_cache_bytes_per_token, video_tokens
    from .modeling import StormConfig

    config = StormConfig()
    size = config.vision_config.image_size
    kv_bytes_per_token = kv_cache_bytes_per_token(config, dtype_bytes=2)
    counts = [
        video_tokens(config, num_frames, temporal_pool_size=k, spatial_pool_size=1, temporal_sampling_stride=1)
        for k in (1, pool)
    ]
    return (
        f"at the paper's scale (7B LLM, {num_frames} frames of {size} px): {counts[0]:,} vs {counts[1]:,} visual tokens, "
        f"bf16 KV cache {counts[0] * kv_bytes_per_token / 2**30:.2f} vs {counts[1] * kv_bytes_per_token / 2**30:.2f} GiB "
        "(`storm-hf info` for more)"
    )


class _Rows:
    """The slice interface `evaluate_temporal_task` reads (`rows[a:b]["messages"]`, ...), without `datasets`."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice) -> dict[str, list]:
        selected = self.rows[index]
        return {key: [row[key] for row in selected] for key in selected[0]}


def fresh_clips(
    folder: Path, count: int, rng: np.random.Generator, question_types, num_frames: int, size: int
) -> _Rows:
    """`count` new clips cycling through `question_types`, written as mp4 files, as evaluation rows."""
    from .synthetic import make_messages, render_sample, write_video

    rows = []
    for index in range(count):
        question_type = question_types[index % len(question_types)]
        frames, question, expected = render_sample(question_type, rng, num_frames=num_frames, size=size)
        video = folder / f"eval-{index:04d}.mp4"
        write_video(video, frames)
        rows.append(
            {"messages": make_messages(video, question, expected), "answer": expected, "question_type": question_type}
        )
    return _Rows(rows)


def run_demo(
    seed: int | None = None,
    question_type: str | None = None,
    eval_clips: int = 100,
    checkpoint: str | Path | None = None,
    out=None,
) -> dict:
    """Run the demo, print it to `out` (default: stdout), and return its numbers."""
    from .accounting import compression_label
    from .synthetic import (
        BAG_OF_FRAMES_CHANCE,
        ORDER_DEPENDENT_TYPES,
        QUESTION_TYPES,
        evaluate_temporal_task,
        render_sample,
        write_video,
    )

    if question_type is not None and question_type not in QUESTION_TYPES:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {', '.join(QUESTION_TYPES)}.")
    if eval_clips < 0:
        raise ValueError(f"--eval-clips must be >= 0, got {eval_clips}.")
    checkpoint = Path(checkpoint) if checkpoint is not None else bundled_checkpoint()
    seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng([seed, 2026])  # not a stream the training set was drawn from
    question_type = question_type or ORDER_DEPENDENT_TYPES[int(rng.integers(len(ORDER_DEPENDENT_TYPES)))]

    def say(*args):
        print(*args, file=out or sys.stdout, flush=True)

    model, processor = load(checkpoint)
    pool = model.config.temporal_pool_size
    compression = compression_label(pool, model.config.spatial_pool_size)
    num_frames = processor.video_processor.num_frames
    size = model.config.vision_config.image_size
    results = {"seed": seed, "question_type": question_type}
    with tempfile.TemporaryDirectory(prefix="storm-demo-") as folder:
        folder = Path(folder)
        frames, question, expected = render_sample(question_type, rng, num_frames=num_frames, size=size)
        video = folder / "clip.mp4"
        write_video(video, frames)
        say(f"STORM demo: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter model from {checkpoint}")
        say(
            f"clip: {num_frames} frames of {size}x{size} px, rendered now (seed {seed}), written to an mp4 and read back"
        )
        say(f"Q: {question}")
        predicted, tokens, _ = answer(model, processor, video, question)
        verdict = "correct" if predicted.lower() == expected.lower() else f"wrong, the answer is {expected}"
        say(f"A: {predicted}   ({verdict})")
        results.update(question=question, expected=expected, predicted=predicted)

        latency = median_latency(model, processor, video, question)
        uncompressed_model, uncompressed_processor = load(checkpoint, temporal_pool_size=1, spatial_pool_size=1)
        full_answer, full_tokens, _ = answer(uncompressed_model, uncompressed_processor, video, question)
        full_latency = median_latency(uncompressed_model, uncompressed_processor, video, question)
        say("")
        say(f"{'':34}{'visual tokens':>14}{'latency (median of 5)':>24}")
        say(f"{'with compression (' + compression + ')':34}{tokens:>14}{latency * 1000:>21.1f} ms")
        say(
            f"{'without compression':34}{full_tokens:>14}{full_latency * 1000:>21.1f} ms   (answer: {full_answer}; trained with pooling)"
        )
        results.update(
            tokens=tokens, tokens_uncompressed=full_tokens, latency_s=latency, latency_uncompressed_s=full_latency
        )
        say(paper_scale_line(pool))

        if eval_clips:
            types = ORDER_DEPENDENT_TYPES
            rows = fresh_clips(folder, eval_clips, rng, types, num_frames, size)
            accuracy = evaluate_temporal_task(model, processor, rows)
            chance = statistics.mean(BAG_OF_FRAMES_CHANCE[t] for t in types)
            per_type = ", ".join(f"{t} {100 * accuracy[t]:.0f}%" for t in types if t in accuracy)
            say("")
            say(
                f"accuracy on {eval_clips} fresh clips (order-dependent questions): {100 * accuracy['all']:.0f}% "
                f"({per_type}); the best a model seeing an unordered bag of frames can do: {100 * chance:.0f}%"
            )
            results.update(accuracy=accuracy["all"], accuracy_per_type=accuracy, bag_of_frames_chance=chance)
    recorded = checkpoint / "task_results.json"
    if recorded.is_file():
        report = json.loads(recorded.read_text())
        test, fresh = report.get("test_accuracy", {}), report.get("fresh_test_set", {})
        if "order_dependent" in test:
            say(
                f"recorded after training: {100 * test['order_dependent']:.0f}% on the order-dependent questions of "
                f"{fresh.get('num_test', '?')} fresh clips (all questions: {100 * test.get('all', float('nan')):.0f}%); "
                f"reproduce with: {report.get('command', 'python examples/train_temporal_task.py')}"
            )
    return results
