"""Datasets of the synthetic temporal task, with test clips that are checked to be unseen.

Every clip carries two content hashes (`render.Scene`): `clip_hash`, of its clean frames in order, and `bag_hash`, of
its clean frames sorted (shared by all answer variants of a scene). A test set drawn with `unseen_clips` rejects every
candidate whose clip hash or bag hash is among the training clips' (`ClipHashes`): no test clip equals a training clip
up to noise, and no test scene is a reordering of a training scene.
"""

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .render import (
    IMAGE_SIZE,
    NUM_FRAMES,
    QUESTION_TYPES,
    QUESTIONS,
    TASK_RENDERING,
    Rendering,
    sample_scene,
    write_video,
)


def make_messages(video, question: str, answer: str | None = None) -> list[dict]:
    """Chat messages for one sample: a user turn with the video and the question, and the answer (if given)."""
    if isinstance(video, (str, os.PathLike)):
        video_entry = {"type": "video", "path": os.fspath(video)}
    else:  # decoded frames (num_frames, height, width, 3)
        video_entry = {"type": "video", "video": video}
    messages = [{"role": "user", "content": [video_entry, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def draw_clips(
    count: int,
    rng: np.random.Generator,
    question_types=QUESTION_TYPES,
    num_frames=NUM_FRAMES,
    size=IMAGE_SIZE,
    rendering: Rendering = TASK_RENDERING,
):
    """Yields `count` clip rows cycling through `question_types` (balanced), each with a uniformly drawn variant,
    rendered as `rendering` says.

    A row: `question_type`, `question`, `answer`, `frames` `(num_frames, size, size, 3)` uint8, `clip_hash`,
    `bag_hash`, `messages` (chat format, the frames inline).
    """
    _check_question_types(question_types)
    for index in range(count):
        question_type = question_types[index % len(question_types)]
        scene = sample_scene(question_type, rng, num_frames, size, rendering)
        variant = int(rng.integers(len(scene.orders)))
        frames, question, answer = (scene.frames(variant), QUESTIONS[question_type], scene.answers[variant])
        yield dict(
            question_type=question_type,
            question=question,
            answer=answer,
            frames=frames,
            clip_hash=scene.clip_hash(variant),
            bag_hash=scene.bag_hash(),
            messages=make_messages(frames, question, answer),
        )


@dataclass
class ClipHashes:
    """The content hashes of a set of clips (typically the training set)."""

    clip_hashes: set[str] = field(default_factory=set)
    bag_hashes: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, rows) -> "ClipHashes":
        return cls({row["clip_hash"] for row in rows}, {row["bag_hash"] for row in rows})

    def contains(self, row) -> bool:
        """Whether `row` equals one of the clips (up to noise) or reorders one of their scenes."""
        return row["clip_hash"] in self.clip_hashes or row["bag_hash"] in self.bag_hashes

    def overlap(self, rows) -> dict[str, dict[str, int]]:
        """Per question type: `clips` (rows equal to one of ours up to noise), `scenes` (rows sharing a bag of frames
        with one of ours) and `rows` (how many rows were checked)."""
        counts = defaultdict(Counter)
        for row in rows:
            counts[row["question_type"]]["rows"] += 1
            counts[row["question_type"]]["clips"] += row["clip_hash"] in self.clip_hashes
            counts[row["question_type"]]["scenes"] += row["bag_hash"] in self.bag_hashes
        return {question_type: dict(counts[question_type]) for question_type in sorted(counts)}


def unseen_clips(count: int, rng: np.random.Generator, seen: ClipHashes, **draw_kwargs):
    """`count` clips (balanced over question types) none of which is in `seen`, and the number of candidates rejected
    per question type. Raises if the scene space is too small to find them (more than 10x `count` rejections)."""
    rows, rejected = [], Counter()
    candidates = draw_clips(10**12, rng, **draw_kwargs)
    question_types = draw_kwargs.get("question_types", QUESTION_TYPES)
    wanted = [question_types[index % len(question_types)] for index in range(count)]
    pending = Counter(wanted)
    for row in candidates if count else ():
        if not pending[row["question_type"]]:
            continue
        if seen.contains(row):
            rejected[row["question_type"]] += 1
            if sum(rejected.values()) > 10 * max(count, 1):
                raise RuntimeError(f"The scene space is too small: {dict(rejected)} candidates were training clips.")
            continue
        rows.append(row)
        pending[row["question_type"]] -= 1
        if not sum(pending.values()):
            break
    rows.sort(key=lambda row: question_types.index(row["question_type"]))
    return rows, {question_type: rejected[question_type] for question_type in question_types}


def distinct_clip_counts(
    draws: int, rng: np.random.Generator, question_types=QUESTION_TYPES, num_frames=NUM_FRAMES, size=IMAGE_SIZE
) -> dict[str, dict[str, int]]:
    """Per question type, how many distinct clips (`clip_hash`) and scenes (`bag_hash`) `draws` random draws gave."""
    rows = list(draw_clips(draws * len(question_types), rng, question_types, num_frames, size))
    return {
        question_type: {
            "draws": draws,
            "distinct_clips": len({row["clip_hash"] for row in rows if row["question_type"] == question_type}),
            "distinct_scenes": len({row["bag_hash"] for row in rows if row["question_type"] == question_type}),
        }
        for question_type in question_types
    }


def _check_question_types(question_types) -> None:
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown or not question_types:
        raise ValueError(f"Unknown question types {sorted(unknown)}; use some of {QUESTION_TYPES}.")


# --------------------------------------------------------------------------------------------------------------------
# On disk: mp4 videos and a `datasets.DatasetDict`
# --------------------------------------------------------------------------------------------------------------------

COLUMNS = ("video", "question_type", "question", "answer", "clip_hash", "bag_hash", "messages")


def generate_temporal_task(
    out_dir: str | os.PathLike,
    num_train: int = 2000,
    num_test: int = 400,
    seed: int = 0,
    question_types=QUESTION_TYPES,
    num_frames: int = NUM_FRAMES,
    size: int = IMAGE_SIZE,
):
    """Renders the task into `out_dir` and returns it as a `datasets.DatasetDict` with `train` and `test` splits.

    Writes `out_dir/videos/{split}/{index:06d}.mp4`, the dataset (`out_dir/dataset`, `DatasetDict.save_to_disk`) and
    `out_dir/task.json` (the arguments, and per question type the test candidates rejected as training clips and the
    overlap left, which is 0). Question types cycle through `question_types`, so every split is balanced; the test
    split is drawn with `unseen_clips` against the training split; a split of size 0 is left out. Columns: `video`
    (path relative to `out_dir`), `question_type`, `question`, `answer`, `clip_hash`, `bag_hash`, `messages` (chat
    format, video path relative to `out_dir`; use `load_temporal_task`, which makes them absolute).
    """
    import datasets

    out_dir = Path(out_dir)
    draw = dict(question_types=tuple(question_types), num_frames=num_frames, size=size)
    train = list(draw_clips(num_train, np.random.default_rng([seed, 0]), **draw))
    seen = ClipHashes.of(train)
    test, rejected = unseen_clips(num_test, np.random.default_rng([seed, 1]), seen, **draw)
    splits = {}
    for split, rows in (("train", train), ("test", test)):
        if not rows:
            continue
        (out_dir / "videos" / split).mkdir(parents=True, exist_ok=True)
        columns = defaultdict(list)
        for index, row in enumerate(rows):
            video = f"videos/{split}/{index:06d}.mp4"
            write_video(out_dir / video, row["frames"])
            row = dict(row, video=video, messages=make_messages(video, row["question"], row["answer"]))
            for column in COLUMNS:
                columns[column].append(row[column])
        splits[split] = datasets.Dataset.from_dict(dict(columns))
    datasets.DatasetDict(splits).save_to_disk(str(out_dir / "dataset"))
    report = dict(
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        question_types=list(question_types),
        num_frames=num_frames,
        size=size,
        test_candidates_rejected=rejected,
        test_overlap_with_train=seen.overlap(test),
    )
    (out_dir / "task.json").write_text(json.dumps(report, indent=2) + "\n")
    return load_temporal_task(out_dir)


def load_temporal_task(out_dir: str | os.PathLike):
    """Loads a task written by `generate_temporal_task`, with the video paths (column and messages) made absolute."""
    import datasets

    root = Path(out_dir).resolve()
    dataset = datasets.load_from_disk(str(root / "dataset"))

    def absolute(row):
        video = str(root / row["video"])
        return {"video": video, "messages": make_messages(video, row["question"], row["answer"])}

    return dataset.map(absolute, desc="resolving video paths")
