"""The shipped checkpoints of the synthetic temporal task: trained on clips the evaluation never uses (checked here by
re-rendering the training set), better than any bag-of-frames model on order questions, answering the questions
they learned with their temporal encoder (better than the same checkpoint without its Mamba layers), and the causal one
streams."""

import copy
import functools
import io
import json
import math

import numpy as np
import pytest
import torch

from storm_hf.synthetic import QUESTION_TYPES, ClipHashes, draw_clips, unseen_clips
from storm_hf.synthetic.demo import (
    BUNDLED_CAUSAL_CHECKPOINT,
    BUNDLED_CHECKPOINT,
    load,
    load_train_hashes,
    recorded_accuracy,
    run_demo,
)
from storm_hf.synthetic.evaluate import normalise_answer, prompt_inputs
from storm_hf.synthetic.render import BAG_OF_FRAMES_CHANCE


pytest.importorskip("av")

CHECKPOINTS = {"bidirectional": BUNDLED_CHECKPOINT, "causal": BUNDLED_CAUSAL_CHECKPOINT}
EVAL_CLIPS = 200  # 50 per question type


def training_clips(checkpoint) -> tuple[dict, ...]:
    """The checkpoint's training clips (question type and content hashes), rendered again from the seed and size its
    `task_results.json` records (as `benchmarks/bench_temporal_task.py` drew them)."""
    recorded = json.loads((checkpoint / "task_results.json").read_text())
    return rendered_training_clips(recorded["settings"]["num_train"], recorded["seed"])


@functools.cache
def rendered_training_clips(num_train: int, seed: int) -> tuple[dict, ...]:
    """Rendered once per (size, seed): the two shipped checkpoints were trained on the same clips. The frames are
    dropped (the checks need the hashes only, and 4000 clips of frames hold 390 MB)."""
    keys = ("question_type", "clip_hash", "bag_hash")
    clips = draw_clips(num_train, np.random.default_rng([seed, 0]))
    return tuple({key: clip[key] for key in keys} for clip in clips)


def chance_p_value(correct: int, chances: list[float]) -> float:
    """P(at least `correct` right answers) for a model right on question i with probability `chances[i]` (the best a
    bag of frames can do), independently: the exact Poisson-binomial tail."""
    distribution = np.ones(1)
    for chance in chances:
        distribution = np.concatenate([distribution * (1 - chance), [0.0]]) + np.concatenate(
            [[0.0], distribution * chance]
        )
    return float(distribution[correct:].sum())


def test_chance_p_value_is_the_binomial_tail():
    # two fair coins: P(>= 1 head) = 3/4, P(>= 2) = 1/4; three dice-like thirds: P(3 right) = 1/27
    assert chance_p_value(1, [0.5, 0.5]) == pytest.approx(0.75)
    assert chance_p_value(2, [0.5, 0.5]) == pytest.approx(0.25)
    assert chance_p_value(3, [1 / 3] * 3) == pytest.approx(1 / 27)
    assert chance_p_value(0, [0.3, 0.9]) == pytest.approx(1.0)


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def demo_run(request):
    """The demo's own run on a checkpoint: `EVAL_CLIPS` clips it checked unseen, and the training clips."""
    checkpoint = CHECKPOINTS[request.param]
    results = run_demo(seed=7, eval_clips=EVAL_CLIPS, checkpoint=checkpoint, out=io.StringIO(), prefill_frames=0)
    return checkpoint, results, training_clips(checkpoint)


def test_the_demo_evaluates_on_clips_that_are_not_training_clips(demo_run):
    checkpoint, results, train = demo_run
    # the hashes shipped with the checkpoint are those of the clips it was trained on ...
    assert load_train_hashes(checkpoint) == ClipHashes.of(train)
    # ... and no clip the demo evaluated on is one of them, or another order of one of their scenes, per question type
    evaluated = results["eval_clips"]
    assert len(evaluated) == EVAL_CLIPS and results["checked_unseen"]
    for question_type in QUESTION_TYPES:
        train_of_type = [row for row in train if row["question_type"] == question_type]
        eval_of_type = [row for row in evaluated if row["question_type"] == question_type]
        assert len(eval_of_type) == EVAL_CLIPS // len(QUESTION_TYPES)
        for key in ("clip_hash", "bag_hash"):
            assert not {row[key] for row in eval_of_type} & {row[key] for row in train_of_type}, (question_type, key)


def test_the_shipped_checkpoints_beat_a_bag_of_frames_on_order_questions(demo_run):
    """Every question is decided by frame order alone; the best a bag-of-frames model can do is the prior of each
    answer. On at least one question type the right answers on the unseen clips must be out of that model's reach:
    p < 1e-4 after a Bonferroni correction over the four types. (The benchmark's recipe learns `direction` on every
    seed and some of the brief-event questions on each: README, "The mechanism on synthetic long videos".)"""
    _, results, _ = demo_run
    p_values = {}
    for question_type in QUESTION_TYPES:
        count = sum(row["question_type"] == question_type for row in results["eval_clips"])
        correct = round(results["accuracy_per_type"][question_type] * count)
        p_values[question_type] = chance_p_value(correct, [BAG_OF_FRAMES_CHANCE[question_type]] * count)
    assert min(p_values.values()) * len(QUESTION_TYPES) < 1e-4, (results["accuracy_per_type"], p_values)


ABLATION_CLIPS = 80  # per question type


def right_answers(model, processor, rows, batch_size: int = 30) -> list[bool]:
    """Whether the greedy answer to each row is right."""
    hits = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        inputs = prompt_inputs(processor, batch)
        with torch.no_grad():
            generated = model.generate(
                **inputs, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
            )
        answers = processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])
        hits += [normalise_answer(answer) == normalise_answer(row["answer"]) for answer, row in zip(answers, batch)]
    return hits


def sign_test_p_value(wins: int, losses: int) -> float:
    """One-sided exact sign test (McNemar on paired answers): P(at least `wins` of `wins + losses` fair coin flips)."""
    total = wins + losses
    return sum(math.comb(total, k) for k in range(wins, total + 1)) / 2**total


def test_sign_test_p_value_is_the_binomial_tail():
    assert sign_test_p_value(1, 0) == pytest.approx(0.5)
    assert sign_test_p_value(2, 1) == pytest.approx(0.5)  # P(>= 2 heads of 3) = 4/8
    assert sign_test_p_value(10, 0) == pytest.approx(2**-10)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_the_shipped_checkpoints_need_their_temporal_encoder_for_what_they_learned(name):
    """The checkpoint against itself with its Mamba layers removed (pixel-shuffle + Linear + pooling + LLM left), on
    the same unseen clips of the question types it learned (its recorded evaluation, as the demo says) except
    `direction`, which the LLM answers without them (it sees the pooled tokens in order: 100% measured on both
    checkpoints without their Mamba layers). On the clips where exactly one of the two is right, the full model must
    be the one far more often than a coin: sign test, p < 1e-4. Measured on these clips (seed 2028, 80 per type):
    bidirectional (count, return) 41 wins / 6 losses, p = 9e-8; causal (first, count) 58 / 8, p = 9e-11."""
    checkpoint = CHECKPOINTS[name]
    question_types = tuple(
        question_type
        for question_type, accuracy in recorded_accuracy(checkpoint).items()
        if accuracy.learned and question_type != "direction"
    )
    assert question_types, "the checkpoint learned no order question but direction"
    model, processor = load(checkpoint)
    without_mamba = copy.deepcopy(model)
    without_mamba.model.temporal_projector.layers = torch.nn.ModuleList()
    rows, _ = unseen_clips(
        ABLATION_CLIPS * len(question_types),
        np.random.default_rng(2028),
        load_train_hashes(checkpoint),
        question_types=question_types,
    )
    full, ablated = right_answers(model, processor, rows), right_answers(without_mamba, processor, rows)
    wins = sum(hit and not other for hit, other in zip(full, ablated))
    losses = sum(other and not hit for hit, other in zip(full, ablated))
    right = {
        question_type: [
            sum(hit for hit, row in zip(answers, rows) if row["question_type"] == question_type)
            for answers in (full, ablated)
        ]
        for question_type in question_types
    }
    assert sign_test_p_value(wins, losses) < 1e-4, f"{wins} wins, {losses} losses; right with/without: {right}"


STREAM_PIECES = (5, 2, 9, 16)  # frames per `add_frames` call: 32 frames, cut inside pooling groups of 4


def test_the_causal_checkpoint_answers_in_streaming_mode_as_offline():
    """Frames arrive in pieces (cut inside pooling groups); the session answers from its KV cache. Its answers equal
    the offline causal model's on the whole clip, and on at least one question type they are right far more often
    than a bag of frames can be (p < 1e-3 after a Bonferroni correction over the four types)."""
    from storm_hf.streaming import StormStreamingSession

    model, processor = load(BUNDLED_CAUSAL_CHECKPOINT)
    assert not model.config.mamba_bidirectional
    rows, _ = unseen_clips(64, np.random.default_rng(2027), load_train_hashes(BUNDLED_CAUSAL_CHECKPOINT))
    streamed, offline = [], []
    for row in rows:
        session = StormStreamingSession(model, processor)
        start = 0
        for size in STREAM_PIECES:
            session.add_frames(row["frames"][start : start + size])
            start += size
        assert start == len(row["frames"])
        streamed.append(normalise_answer(session.ask(row["question"], max_new_tokens=3, do_sample=False)))
        inputs = prompt_inputs(processor, [row])
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        offline.append(normalise_answer(answer))
    assert streamed == offline
    p_values = {}
    for question_type in QUESTION_TYPES:
        hits = [answer == row["answer"] for answer, row in zip(streamed, rows) if row["question_type"] == question_type]
        p_values[question_type] = chance_p_value(sum(hits), [BAG_OF_FRAMES_CHANCE[question_type]] * len(hits))
    assert min(p_values.values()) * len(QUESTION_TYPES) < 1e-3, p_values
