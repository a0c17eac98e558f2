"""The synthetic temporal task: order-dependent questions whose bag of frames does not depend on the answer."""

import numpy as np
import pytest
import torch

from storm_hf import StormForConditionalGeneration
from storm_hf.processing import read_video
from storm_hf.synthetic import (
    COLOURS,
    MIDDLE_LINE,
    NUM_FRAMES,
    ORDER_DEPENDENT_TYPES,
    QUESTION_TYPES,
    background,
    build_task_processor,
    build_task_tokenizer,
    evaluate_temporal_task,
    generate_temporal_task,
    load_temporal_task,
    num_variants,
    render_sample,
    task_words,
    temporal_task_config,
    train_temporal_task_model,
)


pytest.importorskip("av")
datasets = pytest.importorskip("datasets")


def _bag(frames: np.ndarray) -> list[bytes]:
    return sorted(frame.tobytes() for frame in frames)


@pytest.mark.parametrize("question_type", QUESTION_TYPES)
def test_render_sample_shapes_and_answers(question_type):
    answers = set()
    for seed in range(40):
        frames, question, answer = render_sample(question_type, np.random.default_rng(seed))
        assert frames.shape == (NUM_FRAMES, 64, 64, 3) and frames.dtype == np.uint8
        assert question.endswith("?")
        answers.add(answer)
    expected = {
        "direction": {"left", "right"},
        "first": set(COLOURS),
        "reverse": {"yes", "no"},
        "crossings": {"1", "2", "3"},
        "colour": set(COLOURS),
    }[question_type]
    assert answers == expected


@pytest.mark.parametrize("question_type", ORDER_DEPENDENT_TYPES)
@pytest.mark.parametrize("num_frames", [4, 8])
def test_order_dependent_answers_share_one_bag_of_frames(question_type, num_frames):
    """The same scene renders the same multiset of frames for every answer: only the order tells them apart."""
    for seed in range(25):
        renders = [
            render_sample(question_type, np.random.default_rng(seed), num_frames=num_frames, variant=variant)
            for variant in num_variants(question_type, num_frames)
        ]
        bags = {tuple(_bag(frames)) for frames, _, _ in renders}
        answers = [answer for _, _, answer in renders]
        assert len(bags) == 1, f"{question_type}: the bag of frames reveals the answer (seed {seed})"
        assert len(set(answers)) == len(answers)
        # ... and the orders differ, so the answer is in the video
        assert len({frames.tobytes() for frames, _, _ in renders}) == len(renders)


def test_no_single_frame_answers_direction():
    """Left and right videos of one scene contain exactly the same frames, so no frame (or frame statistic) differs."""
    left, _, left_answer = render_sample("direction", np.random.default_rng(3), variant=0)
    right, _, right_answer = render_sample("direction", np.random.default_rng(3), variant=1)
    assert (left_answer, right_answer) == ("left", "right")
    np.testing.assert_array_equal(left[::-1], right)


def test_crossings_count_side_changes():
    for seed in range(20):
        frames, _, answer = render_sample("crossings", np.random.default_rng(seed))
        shape = (frames != background(64)).any(-1) & ~(frames == MIDDLE_LINE).all(-1)  # (frames, H, W)
        shape_columns = [np.nonzero(mask)[1] for mask in shape]
        sides = [int(columns.mean() > 32) for columns in shape_columns]
        assert int(np.count_nonzero(np.diff(sides))) == int(answer)


def test_generate_and_load_the_dataset(tmp_path):
    dataset = generate_temporal_task(tmp_path / "task", num_train=10, num_test=5, seed=1)
    assert set(dataset) == {"train", "test"}
    assert dataset["train"].num_rows == 10 and dataset["test"].num_rows == 5
    assert dataset["train"]["question_type"][:5] == list(QUESTION_TYPES)  # types cycle: balanced splits
    row = dataset["train"][0]
    assert row["messages"][0]["content"][0]["path"] == row["video"]
    assert row["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": row["answer"], "path": None}]}
    frames, metadata = read_video(row["video"])
    assert frames.shape == (NUM_FRAMES, 64, 64, 3) and metadata.total_num_frames == NUM_FRAMES

    # the video holds the rendered frames (near-lossless H.264) and the same seed renders the same task
    again = generate_temporal_task(tmp_path / "again", num_train=10, num_test=5, seed=1)
    assert again["train"]["answer"] == dataset["train"]["answer"]
    rendered, _, answer = render_sample("direction", np.random.default_rng([1, 0]))
    assert answer == dataset["train"][0]["answer"]
    assert np.abs(frames.astype(int) - rendered.astype(int)).max() <= 12

    # the dataset moves with its directory
    moved = tmp_path / "moved"
    (tmp_path / "task").rename(moved)
    reloaded = load_temporal_task(moved)
    assert reloaded["test"][0]["video"].startswith(str(moved.resolve()))
    assert read_video(reloaded["test"][0]["video"])[0].shape[0] == NUM_FRAMES


def test_task_tokenizer_has_one_token_per_word_and_round_trips():
    tokenizer = build_task_tokenizer()
    for word in task_words():
        assert len(tokenizer.tokenize(word)) == 1 and len(tokenizer.tokenize(" " + word)) == 1
    text = "Any text: 42 ünïcode, left-right?"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"


def test_evaluate_reports_accuracy_per_question_type(tmp_path):
    dataset = generate_temporal_task(tmp_path / "task", num_train=0, num_test=10, seed=2)
    tokenizer = build_task_tokenizer()
    torch.manual_seed(0)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer))
    scores = evaluate_temporal_task(model, build_task_processor(tokenizer), dataset["test"], batch_size=4)
    assert set(scores) == {*QUESTION_TYPES, "order_dependent", "all"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_task_model_and_processor_save_and_reload(tmp_path):
    from transformers import AutoProcessor

    dataset = generate_temporal_task(tmp_path / "task", num_train=0, num_test=5, seed=3)
    tokenizer = build_task_tokenizer()
    processor = build_task_processor(tokenizer)
    torch.manual_seed(0)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer)).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path / "checkpoint")
    reloaded = StormForConditionalGeneration.from_pretrained(tmp_path / "checkpoint").eval()
    assert (reloaded_processor.patch_size, reloaded_processor.downsample_ratio) == (16, 4)
    assert evaluate_temporal_task(reloaded, reloaded_processor, dataset["test"]) == evaluate_temporal_task(
        model, processor, dataset["test"]
    )


def test_short_training_run_beats_chance_on_an_order_dependent_question(tmp_path):
    """CI-sized proof of the mechanism: 250 steps on "which colour appears first?" (chance for any bag of frames: 50%)."""
    dataset = generate_temporal_task(tmp_path / "task", num_train=400, num_test=60, seed=0, question_types=("first",))
    tokenizer = build_task_tokenizer()
    processor = build_task_processor(tokenizer)
    torch.manual_seed(0)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and much faster on a busy machine
    try:
        train_temporal_task_model(model, processor, dataset["train"], tmp_path / "trainer", max_steps=250, use_cpu=True)
    finally:
        torch.set_num_threads(threads)
    accuracy = evaluate_temporal_task(model, processor, dataset["test"])["first"]
    assert accuracy >= 0.85, f"accuracy {accuracy:.2f} on 'first' after 250 steps (chance 0.5)"
