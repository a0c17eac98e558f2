"""The synthetic temporal task: answers decided by frame order alone, test clips checked unseen by content hash."""

import hashlib
import json

import numpy as np
import pytest
import torch

from storm_hf.processing import read_video
from storm_hf.synthetic import (
    COLOURS,
    IMAGE_SIZE,
    NUM_FRAMES,
    QUESTION_TYPES,
    ClipHashes,
    build_task_processor,
    build_task_tokenizer,
    distinct_clip_counts,
    draw_clips,
    evaluate_temporal_task,
    generate_temporal_task,
    load_temporal_task,
    render_sample,
    sample_scene,
    task_words,
    unseen_clips,
)


pytest.importorskip("av")
datasets = pytest.importorskip("datasets")

ANSWERS = {"first": set(COLOURS), "count": {"1", "2", "3"}, "return": {"yes", "no"}, "direction": {"left", "right"}}


def frame_hashes(frames: np.ndarray) -> list[str]:
    return [hashlib.sha256(frame.tobytes()).hexdigest() for frame in frames]


@pytest.mark.parametrize("question_type", QUESTION_TYPES)
def test_render_sample_shapes_and_answers(question_type):
    answers = set()
    for seed in range(40):
        frames, question, answer = render_sample(question_type, np.random.default_rng(seed))
        assert frames.shape == (NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3) and frames.dtype == np.uint8
        assert question.endswith("?")
        answers.add(answer)
    assert answers == ANSWERS[question_type]


@pytest.mark.parametrize("question_type", QUESTION_TYPES)
@pytest.mark.parametrize("num_frames", [32, 64])
def test_answer_variants_share_one_bag_of_frames(question_type, num_frames):
    """By construction: the variants of a scene show the same multiset of frames (noise included), in another order.
    So neither a single frame nor the unordered bag tells the answers apart; the order does."""
    for seed in range(10):
        renders = [
            render_sample(question_type, np.random.default_rng(seed), num_frames=num_frames, variant=variant)
            for variant in range(len(sample_scene(question_type, np.random.default_rng(seed), num_frames).orders))
        ]
        bags = {tuple(sorted(frame_hashes(frames))) for frames, _, _ in renders}
        assert len(bags) == 1, f"{question_type}: the bag of frames differs between answers (seed {seed})"
        assert len({answer for _, _, answer in renders}) == len(renders)  # every variant has its own answer ...
        assert len({tuple(frame_hashes(frames)) for frames, _, _ in renders}) == len(renders)  # ... and its own order


def _runs(flags) -> int:
    """Number of runs of True in a sequence of booleans."""
    flags = np.asarray(flags, dtype=int)
    return int(np.count_nonzero(np.diff(np.concatenate([[0], flags])) == 1))


def test_answers_match_what_the_clean_frames_show():
    """Reads each answer back from the pixels: runs of flash frames, where the shape ends, which colour shows first."""
    for seed in range(30):
        scene = sample_scene("count", np.random.default_rng(seed))
        for variant, answer in enumerate(scene.answers):
            clean = scene.clean_frames(variant)
            background = scene.states[0]
            assert _runs([(frame != background).any() for frame in clean]) == int(answer)
            assert all(1 <= length <= 3 for length in _run_lengths([(f != background).any() for f in clean]))

        scene = sample_scene("return", np.random.default_rng(seed))
        for variant, answer in enumerate(scene.answers):
            clean = scene.clean_frames(variant)
            away = [not np.array_equal(frame, clean[0]) for frame in clean]
            assert 1 <= sum(away) <= 3 and _runs(away) == 1
            assert (not away[-1]) == (answer == "yes")

        scene = sample_scene("first", np.random.default_rng(seed))
        for variant, answer in enumerate(scene.answers):
            clean = scene.clean_frames(variant)
            first_flash = next(frame for frame in clean if not np.array_equal(frame, scene.states[0]))
            changed = first_flash[(first_flash != scene.states[0]).any(-1)].astype(int)  # the flash's pixels
            assert np.abs(changed - np.asarray(COLOURS[answer])).max() <= 20


def _run_lengths(flags) -> list[int]:
    lengths, current = [], 0
    for flag in list(flags) + [False]:
        if flag:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_unseen_clips_rejects_training_clips():
    """A test set drawn from the very stream the training clips came from: every training clip is rejected by hash."""
    train = list(draw_clips(40, np.random.default_rng(7)))
    seen = ClipHashes.of(train)
    test, rejected = unseen_clips(8, np.random.default_rng(7), seen)
    assert rejected == {question_type: 10 for question_type in QUESTION_TYPES}
    assert seen.overlap(test) == {t: {"rows": 2, "clips": 0, "scenes": 0} for t in sorted(QUESTION_TYPES)}
    assert seen.overlap(train[:4]) == {t: {"rows": 1, "clips": 1, "scenes": 1} for t in sorted(QUESTION_TYPES)}
    # another variant of a training scene (same bag, other order) is rejected too
    reordered = dict(train[0], clip_hash="another order")
    assert seen.contains(reordered) and not seen.contains(dict(reordered, bag_hash="another scene"))
    # no clips wanted (a training-only dataset): nothing drawn (this looped forever over an endless stream)
    assert unseen_clips(0, np.random.default_rng(7), seen) == (
        [],
        {question_type: 0 for question_type in QUESTION_TYPES},
    )


def test_scene_space_is_far_larger_than_a_training_set():
    counts = distinct_clip_counts(150, np.random.default_rng(3))
    for question_type in QUESTION_TYPES:
        assert counts[question_type] == {"draws": 150, "distinct_clips": 150, "distinct_scenes": 150}


def test_generate_and_load_the_dataset(tmp_path):
    dataset = generate_temporal_task(tmp_path / "task", num_train=8, num_test=4, seed=1)
    assert dataset["train"].num_rows == 8 and dataset["test"].num_rows == 4
    assert dataset["train"]["question_type"][:4] == list(QUESTION_TYPES)  # types cycle: balanced splits
    report = json.loads((tmp_path / "task" / "task.json").read_text())
    assert report["test_overlap_with_train"] == {
        t: {"rows": 1, "clips": 0, "scenes": 0} for t in sorted(QUESTION_TYPES)
    }
    row = dataset["train"][0]
    assert row["messages"][0]["content"][0]["path"] == row["video"]
    frames, metadata = read_video(row["video"])
    assert frames.shape == (NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3) and metadata.total_num_frames == NUM_FRAMES
    rendered = next(draw_clips(1, np.random.default_rng([1, 0])))
    assert rendered["clip_hash"] == row["clip_hash"] and rendered["answer"] == row["answer"]
    # lossless H.264: only the RGB <-> YUV conversion rounds
    assert np.abs(frames.astype(int) - rendered["frames"].astype(int)).max() <= 3

    moved = tmp_path / "moved"
    (tmp_path / "task").rename(moved)
    assert load_temporal_task(moved)["test"][0]["video"].startswith(str(moved.resolve()))


def test_task_tokenizer_has_one_token_per_word_and_round_trips():
    tokenizer = build_task_tokenizer()
    for word in task_words():
        assert len(tokenizer.tokenize(word)) == 1 and len(tokenizer.tokenize(" " + word)) == 1
    text = "Any text: 42 ünïcode, left-right?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"


class ScriptedAnswers(torch.nn.Module):
    """A stand-in model whose greedy answer to the i-th prompt it is given is `words[i]`."""

    def __init__(self, tokenizer, words: list[str]):
        super().__init__()
        self.answers = [torch.tensor(tokenizer.convert_tokens_to_ids([word, tokenizer.eos_token])) for word in words]
        self.batch_sizes = []

    def generate(self, input_ids, **kwargs):
        answers, self.answers = self.answers[: len(input_ids)], self.answers[len(input_ids) :]
        self.batch_sizes.append(len(input_ids))
        return torch.cat([input_ids, torch.stack(answers)], dim=1)


def test_evaluate_scores_a_hand_counted_case_exactly():
    rows = list(draw_clips(6, np.random.default_rng(5)))  # question types cycle: first, count, return, direction, ...
    assert [row["question_type"] for row in rows] == ["first", "count", "return", "direction", "first", "count"]
    words = [row["answer"] for row in rows]
    for wrong in (1, 4, 5):  # another answer of the row's question type
        words[wrong] = min(ANSWERS[rows[wrong]["question_type"]] - {words[wrong]})
    tokenizer = build_task_tokenizer()
    model = ScriptedAnswers(tokenizer, words)
    scores = evaluate_temporal_task(model, build_task_processor(tokenizer), rows, batch_size=4)
    # first: 1 of 2, count: 0 of 2, return: 1 of 1, direction: 1 of 1; all (every type is order-dependent): 3 of 6
    assert scores == {"first": 0.5, "count": 0.0, "return": 1.0, "direction": 1.0, "order_dependent": 0.5, "all": 0.5}
    assert model.batch_sizes == [4, 2]


def test_first_stage_rows_are_those_of_its_question_types():
    from storm_hf.synthetic.train import _rows_of_types

    rows = list(draw_clips(8, np.random.default_rng(3)))
    selected = _rows_of_types(rows, ("direction", "first"))
    assert [row["clip_hash"] for row in selected] == [
        row["clip_hash"] for row in rows if row["question_type"] in ("direction", "first")
    ]
    dataset = datasets.Dataset.from_dict({"question_type": [row["question_type"] for row in rows]})
    assert _rows_of_types(dataset, ("count",))["question_type"] == ["count", "count"]
    with pytest.raises(ValueError, match="No training rows of the first-stage question types"):
        _rows_of_types(rows[:1], ("direction",))
