"""`storm-hf demo`: a question about a freshly rendered clip, answered by the small STORM shipped in the package.

The bundled checkpoint (`storm_hf/synthetic/demo_checkpoint/`, saved by `benchmarks/bench_temporal_task.py
--demo-checkpoint`; `examples/train_temporal_task.py` trains one too) is a ~1M-parameter STORM trained on the
synthetic temporal task (`storm_hf.synthetic`), whose questions (which colour flashes first, how many flashes, does the
shape come back, which way it moves) cannot be answered from any single frame or from an unordered bag of frames. The
checkpoint ships the content hashes of its training clips (`train_hashes.json`). The demo:

1. renders a clip, checks its hashes against the training clips' (drawing again if it was one), writes it as an mp4;
2. answers the clip's question, reading the video file like any other;
3. shows the visual tokens and latency with the model's temporal pooling (the compression it was trained with) and
   without it (no pooling: every frame's tokens reach the LLM);
4. measures accuracy on a set of clips checked the same way, against what an unordered bag of frames can reach.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..accounting import compression_label
from .data import ClipHashes, make_messages, unseen_clips
from .evaluate import evaluate_temporal_task, normalise_answer
from .render import BAG_OF_FRAMES_CHANCE, QUESTION_TYPES, write_video


BUNDLED_CHECKPOINT = Path(__file__).parent / "demo_checkpoint"
# The same task model trained with the causal projector (`mamba_bidirectional=False`): the one that streams
# (`storm_hf.streaming.StormStreamingSession`); `storm-hf demo --checkpoint` runs the demo with it.
BUNDLED_CAUSAL_CHECKPOINT = Path(__file__).parent / "demo_checkpoint_causal"
TRAIN_HASHES = "train_hashes.json"


def bundled_checkpoint() -> Path:
    if not (BUNDLED_CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"The demo checkpoint is missing from the package ({BUNDLED_CHECKPOINT}); reinstall storm-hf, or pass "
            "--checkpoint with a model trained on storm_hf.synthetic."
        )
    return BUNDLED_CHECKPOINT


def save_demo_checkpoint(model, processor, folder: str | Path, train_hashes: ClipHashes) -> Path:
    """Saves `model`, `processor` and the content hashes of the training clips (`load_train_hashes`) to `folder`.

    The checkpoint loads through storm_hf's Auto classes (`import storm_hf`): `save_pretrained` writes an `auto_map`
    to `trust_remote_code` modules and copies them, which a package-data folder should not carry (stale copies of
    storm_hf's own code), so the copies and every `auto_map` are removed.
    """
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for path in folder.glob("*.py"):
        path.unlink()
    for path in folder.glob("*.json"):
        path.write_text(json.dumps(_without_auto_map(json.loads(path.read_text())), indent=2) + "\n")
    payload = {"clip_hashes": sorted(train_hashes.clip_hashes), "bag_hashes": sorted(train_hashes.bag_hashes)}
    (folder / TRAIN_HASHES).write_text(json.dumps(payload) + "\n")
    return folder


def _without_auto_map(value):
    if isinstance(value, dict):
        return {key: _without_auto_map(item) for key, item in value.items() if key != "auto_map"}
    return value


def load_train_hashes(folder: str | Path) -> ClipHashes | None:
    """The training clips' content hashes saved with a checkpoint, or None if it has none."""
    path = Path(folder) / TRAIN_HASHES
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return ClipHashes(set(payload["clip_hashes"]), set(payload["bag_hashes"]))


def load(checkpoint: Path, **config_overrides):
    """The model (float32, CPU) and processor of `checkpoint`; pooling overrides go to both."""
    from transformers import AutoProcessor

    from ..modeling import StormForConditionalGeneration

    model = StormForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, **config_overrides).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, **config_overrides)  # the video processor counts with them
    return model, processor


def answer(model, processor, video: Path, question: str, max_new_tokens: int = 3) -> tuple[str, int, float]:
    """Greedy answer, the number of visual tokens, and the latency (decode + encode + prefill + generation), in s."""
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
    from ..accounting import kv_cache_bytes_per_token, video_tokens
    from ..modeling import StormConfig

    config = StormConfig()
    size = config.vision_config.image_size
    kv_bytes_per_token = kv_cache_bytes_per_token(config, dtype_bytes=2)
    counts = [
        video_tokens(config, num_frames, temporal_pool_size=k, spatial_pool_size=1, temporal_sampling_stride=1)
        for k in (1, pool)
    ]
    return (
        f"at the paper's scale (7B LLM, {num_frames} frames of {size} px): {counts[0]:,} vs {counts[1]:,} visual "
        f"tokens, bf16 KV cache {counts[0] * kv_bytes_per_token / 2**30:.2f} vs "
        f"{counts[1] * kv_bytes_per_token / 2**30:.2f} GiB "
        "(`storm-hf info` for more)"
    )


def run_demo(
    seed: int | None = None,
    question_type: str | None = None,
    eval_clips: int = 100,
    checkpoint: str | Path | None = None,
    out=None,
) -> dict:
    """Run the demo, print it to `out` (default: stdout), and return its numbers."""
    if question_type is not None and question_type not in QUESTION_TYPES:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {', '.join(QUESTION_TYPES)}.")
    if eval_clips < 0:
        raise ValueError(f"--eval-clips must be >= 0, got {eval_clips}.")
    checkpoint = Path(checkpoint) if checkpoint is not None else bundled_checkpoint()
    seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng([seed, 2026])
    question_type = question_type or QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]

    def say(*args):
        print(*args, file=out or sys.stdout, flush=True)

    model, processor = load(checkpoint)
    seen = load_train_hashes(checkpoint)
    checked = seen is not None
    seen = seen if checked else ClipHashes()
    pool = model.config.temporal_pool_size
    compression = compression_label(pool, model.config.spatial_pool_size)
    draw = dict(num_frames=processor.video_processor.num_frames, size=model.config.vision_config.image_size)
    results = {"seed": seed, "question_type": question_type, "checked_unseen": checked}
    with tempfile.TemporaryDirectory(prefix="storm-demo-") as folder:
        folder = Path(folder)
        (clip,), rejected = unseen_clips(1, rng, seen, question_types=(question_type,), **draw)
        video = folder / "clip.mp4"
        write_video(video, clip["frames"])
        say(f"STORM demo: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter model from {checkpoint}")
        provenance = (
            f"checked unseen: its content hash is not among the {len(seen.clip_hashes)} training clips' "
            f"({rejected[question_type]} candidates rejected)"
            if checked
            else f"NOT checked against the training clips: {checkpoint} has no {TRAIN_HASHES}"
        )
        say(
            f"clip: {draw['num_frames']} frames of {draw['size']}x{draw['size']} px, rendered now (seed {seed}); "
            + provenance
        )
        say(f"Q: {clip['question']}")
        predicted, tokens, _ = answer(model, processor, video, clip["question"])
        correct = normalise_answer(predicted) == normalise_answer(clip["answer"])
        say(f"A: {predicted}   ({'correct' if correct else 'wrong, the answer is ' + clip['answer']})")
        results.update(question=clip["question"], expected=clip["answer"], predicted=predicted)

        latency = median_latency(model, processor, video, clip["question"])
        uncompressed_model, uncompressed_processor = load(checkpoint, temporal_pool_size=1, spatial_pool_size=1)
        full_answer, full_tokens, _ = answer(uncompressed_model, uncompressed_processor, video, clip["question"])
        full_latency = median_latency(uncompressed_model, uncompressed_processor, video, clip["question"])
        say("")
        say(f"{'':34}{'visual tokens':>14}{'latency (median of 5)':>24}")
        say(f"{'with compression (' + compression + ')':34}{tokens:>14}{latency * 1000:>21.1f} ms")
        say(
            f"{'without compression':34}{full_tokens:>14}{full_latency * 1000:>21.1f} ms   "
            f"(answer: {full_answer}; trained with pooling)"
        )
        results.update(
            tokens=tokens, tokens_uncompressed=full_tokens, latency_s=latency, latency_uncompressed_s=full_latency
        )
        say(paper_scale_line(pool))

        if eval_clips:
            rows, rejected = unseen_clips(eval_clips, rng, seen, **draw)
            overlap = seen.overlap(rows)
            shared = sum(counts["clips"] + counts["scenes"] for counts in overlap.values())
            accuracy = evaluate_temporal_task(model, processor, rows)
            chance = statistics.mean(BAG_OF_FRAMES_CHANCE[row["question_type"]] for row in rows)
            per_type = ", ".join(f"{t} {100 * accuracy[t]:.0f}%" for t in QUESTION_TYPES if t in accuracy)
            where = (
                f"clips checked unseen ({shared} of them share a clip or scene hash with training; "
                f"{sum(rejected.values())} candidates rejected)"
                if checked
                else "clips NOT checked against the training clips"
            )
            say("")
            say(
                f"accuracy on {eval_clips} {where}: {100 * accuracy['all']:.0f}% ({per_type}); "
                f"the best a model seeing an unordered bag of frames can do: {100 * chance:.0f}%"
            )
            results.update(
                accuracy=accuracy["all"],
                accuracy_per_type=accuracy,
                bag_of_frames_chance=chance,
                eval_overlap=overlap,
                eval_candidates_rejected=rejected,
                eval_clips=[{key: row[key] for key in ("question_type", "clip_hash", "bag_hash")} for row in rows],
            )
    return results
