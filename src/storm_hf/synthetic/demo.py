"""`storm-hf demo`: a question about a freshly rendered clip, answered by the small STORM shipped in the package.

The bundled checkpoint (`storm_hf/synthetic/demo_checkpoint/`, saved by `benchmarks/bench_temporal_task.py
--demo-checkpoint`; `examples/train_temporal_task.py` trains one too) is a ~1M-parameter STORM trained on the
synthetic temporal task (`storm_hf.synthetic`), whose questions (which colour flashes first, how many flashes, does the
shape come back, which way it moves) cannot be answered from any single frame or from an unordered bag of frames. The
checkpoint ships the content hashes of its training clips (`train_hashes.json`). The demo:

1. renders a clip, checks its hashes against the training clips' (drawing again if it was one), writes it as an mp4;
2. says which question types the checkpoint learned (its recorded per-type accuracy against what an unordered bag
   of frames can reach) and asks a question of one of them, reading the video file like any other;
3. shows the visual tokens with the model's compression and without it, and times reading the file apart from the
   model; at this toy size the token count does not decide the model's time, so the effect of compression on time
   is measured where it does: the prefill of a Qwen2-0.5B-shaped decoder layer over the visual tokens of a few
   frames at the paper's resolution;
4. measures accuracy on a set of clips checked the same way, per question type, against the bag-of-frames bound.
"""

import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..accounting import compression_label, kv_cache_bytes_per_token, video_tokens
from ..modeling import StormConfig
from .data import ClipHashes, make_messages, unseen_clips
from .evaluate import evaluate_temporal_task, normalise_answer
from .render import BAG_OF_FRAMES_CHANCE, QUESTION_TYPES, write_video


BUNDLED_CHECKPOINT = Path(__file__).parent / "demo_checkpoint"
# The same task model trained with the causal projector (`mamba_bidirectional=False`): the one that streams
# (`storm_hf.streaming.StormStreamingSession`); `storm-hf demo --checkpoint` runs the demo with it.
BUNDLED_CAUSAL_CHECKPOINT = Path(__file__).parent / "demo_checkpoint_causal"
TRAIN_HASHES = "train_hashes.json"
TASK_RESULTS = "task_results.json"  # the benchmark's evaluation of the checkpoint when it saved it
LEARNED_P_VALUE = 1e-3  # a question type is learned when a bag of frames gets its accuracy by luck less often
# The paper-scale prefill measurement: one decoder layer of Qwen2-0.5B's shape (the paper's 7B layer is 16x slower
# per token, too slow for a demo on a CPU) over the visual tokens of PREFILL_FRAMES frames at 448 px.
PREFILL_LAYER = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2)
PREFILL_FRAMES = 4


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


def load(checkpoint: Path):
    """The model (float32, CPU) and processor of `checkpoint`."""
    from transformers import AutoProcessor

    from ..modeling import StormForConditionalGeneration

    model = StormForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(checkpoint)


def binomial_tail(correct: int, total: int, chance: float) -> float:
    """P(at least `correct` of `total` right) for a model right with probability `chance` on each question."""
    return sum(math.comb(total, k) * chance**k * (1 - chance) ** (total - k) for k in range(correct, total + 1))


@dataclass
class TypeAccuracy:
    """A checkpoint's accuracy on one question type, against the best a bag of frames can do (`chance`)."""

    correct: int
    total: int
    chance: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def learned(self) -> bool:
        """Right more often than any bag-of-frames model could be by luck: one-sided binomial p < LEARNED_P_VALUE."""
        return binomial_tail(self.correct, self.total, self.chance) < LEARNED_P_VALUE

    def describe(self) -> str:
        return f"{100 * self.accuracy:.0f}% (bag of frames {100 * self.chance:.0f}%)"


def recorded_accuracy(checkpoint: Path) -> dict[str, TypeAccuracy] | None:
    """Per question type, the accuracy `benchmarks/bench_temporal_task.py` measured for `checkpoint` when it saved it
    (`task_results.json`: its unseen test clips, at the trained compression), or None without that file."""
    path = Path(checkpoint) / TASK_RESULTS
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    accuracy, total = recorded["evaluations"]["1"]["accuracy"], recorded["settings"]["num_test"]
    return {
        question_type: TypeAccuracy(round(accuracy[question_type] * total), total, BAG_OF_FRAMES_CHANCE[question_type])
        for question_type in QUESTION_TYPES
    }


def model_inputs(processor, video: Path, question: str):
    """Decodes and processes the video file and the question: the model's inputs."""
    inputs = processor.apply_chat_template(
        make_messages(video, question), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs.pop("video_metadata", None)
    return inputs


def generate_answer(model, processor, inputs, max_new_tokens: int = 3) -> str:
    """The model's greedy answer to processed `inputs` (vision tower, projector, compression, LLM)."""
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
        )
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def answer(model, processor, video: Path, question: str, max_new_tokens: int = 3) -> str:
    """The model's greedy answer to `question` about the video file `video`."""
    return generate_answer(model, processor, model_inputs(processor, video, question), max_new_tokens)


def time_demo_model(model, processor, video: Path, question: str, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of (decoding + processing the video file, the model answering from the processed inputs), the
    two timed alternately, `repeats` times each after a warm-up."""
    decode_times, model_times = [], []
    generate_answer(model, processor, model_inputs(processor, video, question))
    for _ in range(repeats):
        started = time.perf_counter()
        inputs = model_inputs(processor, video, question)
        decoded = time.perf_counter()
        generate_answer(model, processor, inputs)
        decode_times.append(decoded - started)
        model_times.append(time.perf_counter() - decoded)
    return statistics.median(decode_times), statistics.median(model_times)


def prefill_seconds(token_counts: list[int], repeats: int = 3) -> dict[int, float]:
    """Minimum CPU seconds over `repeats` of one forward pass (a prefill, no KV cache kept) of a single decoder layer
    of Qwen2-0.5B's shape (`PREFILL_LAYER`, random weights) over each of `token_counts` hidden states, the counts
    interleaved in every repeat. Run on one torch thread and timed in CPU time (`time.process_time`), so the time a
    loaded machine makes the process wait for a core is not counted."""
    from transformers import Qwen2Config, Qwen2Model

    generator = torch.Generator().manual_seed(0)
    layer = Qwen2Model(Qwen2Config(num_hidden_layers=1, vocab_size=1, **PREFILL_LAYER)).eval()
    hidden = {n: torch.randn(1, n, PREFILL_LAYER["hidden_size"], generator=generator) for n in token_counts}
    times = {n: [] for n in token_counts}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            layer(inputs_embeds=hidden[min(token_counts)], use_cache=False)  # warm-up
            for _ in range(repeats):
                for n in token_counts:
                    started = time.process_time()
                    layer(inputs_embeds=hidden[n], use_cache=False)
                    times[n].append(time.process_time() - started)
    finally:
        torch.set_num_threads(threads)
    return {n: min(values) for n, values in times.items()}


def paper_scale_line(pool: int, num_frames: int = 128) -> str:
    """The same compression at the paper's scale: visual tokens and LLM KV cache of the 7B model (`storm-hf info`)."""
    config = StormConfig()
    size = config.vision_config.image_size
    kv_bytes_per_token = kv_cache_bytes_per_token(config, dtype_bytes=2)
    counts = [paper_video_tokens(num_frames, k) for k in (1, pool)]
    return (
        f"at the paper's scale (7B LLM, {num_frames} frames of {size} px): {counts[0]:,} vs {counts[1]:,} visual "
        f"tokens, bf16 KV cache {counts[0] * kv_bytes_per_token / 2**30:.2f} vs "
        f"{counts[1] * kv_bytes_per_token / 2**30:.2f} GiB "
        "(`storm-hf info` for more)"
    )


def paper_video_tokens(num_frames: int, temporal_pool_size: int) -> int:
    """Visual tokens of `num_frames` frames for the paper's 7B model (448 px) with temporal pooling only."""
    return video_tokens(
        StormConfig(),
        num_frames,
        temporal_pool_size=temporal_pool_size,
        spatial_pool_size=1,
        temporal_sampling_stride=1,
    )


def choose_question_type(rng, recorded: dict[str, TypeAccuracy] | None) -> str:
    """A random question type among those the checkpoint learned (all types without a record, or if none)."""
    learned = [t for t in QUESTION_TYPES if recorded is not None and recorded[t].learned]
    choices = learned or list(QUESTION_TYPES)
    return choices[int(rng.integers(len(choices)))]


def run_demo(
    seed: int | None = None,
    question_type: str | None = None,
    eval_clips: int = 100,
    checkpoint: str | Path | None = None,
    out=None,
    prefill_frames: int | None = None,
) -> dict:
    """Run the demo, print it to `out` (default: stdout), and return its numbers. `prefill_frames`: frames of the
    paper-scale prefill measurement (default `PREFILL_FRAMES`; 0 skips it)."""
    prefill_frames = PREFILL_FRAMES if prefill_frames is None else prefill_frames
    if question_type is not None and question_type not in QUESTION_TYPES:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {', '.join(QUESTION_TYPES)}.")
    if eval_clips < 0:
        raise ValueError(f"--eval-clips must be >= 0, got {eval_clips}.")
    if prefill_frames < 0:
        raise ValueError(f"`prefill_frames` must be >= 0, got {prefill_frames}.")
    checkpoint = Path(checkpoint) if checkpoint is not None else bundled_checkpoint()
    seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng([seed, 2026])

    def say(*args):
        print(*args, file=out or sys.stdout, flush=True)

    model, processor = load(checkpoint)
    recorded = recorded_accuracy(checkpoint)
    question_type = question_type or choose_question_type(rng, recorded)
    seen = load_train_hashes(checkpoint)
    checked = seen is not None
    seen = seen if checked else ClipHashes()
    pool = model.config.temporal_pool_size
    compression = compression_label(pool, model.config.spatial_pool_size)
    draw = dict(num_frames=processor.video_processor.num_frames, size=model.config.vision_config.image_size)
    results = {"seed": seed, "question_type": question_type, "checked_unseen": checked}
    say(f"STORM demo: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter model from {checkpoint}")
    if recorded is None:
        say(f"what it learned: unknown ({checkpoint} has no {TASK_RESULTS}); the question type is drawn from all")
    else:
        learned = [f"{t} {recorded[t].describe()}" for t in QUESTION_TYPES if recorded[t].learned]
        not_learned = [f"{t} {recorded[t].describe()}" for t in QUESTION_TYPES if not recorded[t].learned]
        say(
            f"learned (its evaluation when saved, {recorded[QUESTION_TYPES[0]].total} unseen clips per type, "
            f"p < {LEARNED_P_VALUE:g} against a bag of frames): {', '.join(learned) or 'none'}"
            + (f"; not learned: {', '.join(not_learned)}" if not_learned else "")
        )
        results["learned_question_types"] = [t for t in QUESTION_TYPES if recorded[t].learned]
    with tempfile.TemporaryDirectory(prefix="storm-demo-") as folder:
        folder = Path(folder)
        (clip,), rejected = unseen_clips(1, rng, seen, question_types=(question_type,), **draw)
        video = folder / "clip.mp4"
        write_video(video, clip["frames"])
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
        if recorded is not None and not recorded[question_type].learned:
            say(f"(a '{question_type}' question: a type this checkpoint did not learn, its answer is a guess)")
        say(f"Q: {clip['question']}")
        inputs = model_inputs(processor, video, clip["question"])
        predicted = generate_answer(model, processor, inputs)
        tokens = int((inputs["input_ids"] == processor.video_token_id).sum())
        correct = normalise_answer(predicted) == normalise_answer(clip["answer"])
        say(f"A: {predicted}   ({'correct' if correct else 'wrong, the answer is ' + clip['answer']})")
        decode_seconds, model_seconds = time_demo_model(model, processor, video, clip["question"])
        full_tokens = video_tokens(model.config, draw["num_frames"], temporal_pool_size=1, spatial_pool_size=1)
        say("")
        say(
            f"visual tokens: {tokens} with compression ({compression}), {full_tokens} without; time (median of 5): "
            f"reading + processing the mp4 {decode_seconds * 1000:.0f} ms, the model {model_seconds * 1000:.0f} ms"
        )
        results.update(
            question=clip["question"],
            expected=clip["answer"],
            predicted=predicted,
            tokens=tokens,
            tokens_uncompressed=full_tokens,
            decode_seconds=decode_seconds,
            model_seconds=model_seconds,
        )

    if prefill_frames:
        if prefill_frames < pool:
            raise ValueError(
                f"--prefill-frames {prefill_frames} is below the temporal pooling size {pool}: the frames would form "
                f"one partial pooling group, and compression would not change their token count. Use >= {pool}."
            )
        counts = [paper_video_tokens(prefill_frames, k) for k in (pool, 1)]
        seconds = prefill_seconds(counts)
        say(
            f"where the token count decides the time: one Qwen2-0.5B-shaped decoder layer (random weights) prefilling "
            f"the visual tokens of {prefill_frames} frames at the paper's 448 px: {counts[0]} tokens ({compression}) "
            f"{seconds[counts[0]] * 1000:.0f} ms, {counts[1]} tokens (none) {seconds[counts[1]] * 1000:.0f} ms "
            "(CPU time on one thread, minimum of 3, interleaved)"
        )
        results["prefill_seconds"] = seconds
    say(paper_scale_line(pool))

    if eval_clips:
        rows, rejected = unseen_clips(eval_clips, rng, seen, **draw)
        overlap = seen.overlap(rows)
        shared = sum(counts["clips"] + counts["scenes"] for counts in overlap.values())
        accuracy = evaluate_temporal_task(model, processor, rows)
        totals = Counter(row["question_type"] for row in rows)
        measured = {
            t: TypeAccuracy(round(accuracy[t] * totals[t]), totals[t], BAG_OF_FRAMES_CHANCE[t])
            for t in QUESTION_TYPES
            if t in totals
        }
        chance = statistics.mean(BAG_OF_FRAMES_CHANCE[row["question_type"]] for row in rows)
        per_type = ", ".join(f"{t} {measured[t].describe()}{' *' if measured[t].learned else ''}" for t in measured)
        where = (
            f"clips checked unseen ({shared} of them share a clip or scene hash with training; "
            f"{sum(rejected.values())} candidates rejected)"
            if checked
            else "clips NOT checked against the training clips"
        )
        say("")
        say(
            f"accuracy on {eval_clips} {where}: {100 * accuracy['all']:.0f}% (bag of frames: {100 * chance:.0f}%); "
            f"per type: {per_type} (* p < {LEARNED_P_VALUE:g} against a bag of frames)"
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
