"""A synthetic long-video question-answering task whose answers are decided by the order of the frames alone.

Clips are 32 frames of 32x32 px; every question is built so that the answer variants of a scene show the same
multiset of frames (noise included) in different orders (`render`), and test clips are checked, by content hash, not
to be training clips (`data`). The task model is STORM at toy scale (`task`); `train` and `evaluate` run and score it;
`demo` is `storm-hf demo`, with the trained weights shipped as package data in `demo_checkpoint/`.

- `render`: scenes, answer variants, content hashes, `Rendering` (the difficulty settings), `render_sample`,
  `write_video`.
- `data`: clip rows, `ClipHashes`, `unseen_clips`, `distinct_clip_counts`, the on-disk `generate_temporal_task`.
- `task`: `build_task_tokenizer`, `build_task_processor`, `temporal_task_config`.
- `train`: `train_temporal_task_model` (`StormTrainer`).
- `evaluate`: `evaluate_temporal_task` (greedy exact match per question type).
- `demo`: `run_demo`.
"""

from .data import (
    ClipHashes,
    distinct_clip_counts,
    draw_clips,
    generate_temporal_task,
    load_temporal_task,
    make_messages,
    unseen_clips,
)
from .evaluate import evaluate_temporal_task, normalise_answer
from .render import (
    BAG_OF_FRAMES_CHANCE,
    COLOURS,
    FIRST_RENDERING,
    IMAGE_SIZE,
    NUM_FRAMES,
    ORDER_DEPENDENT_TYPES,
    QUESTION_TYPES,
    QUESTIONS,
    SMALL_FLASHES_RENDERING,
    TASK_RENDERING,
    Rendering,
    Scene,
    render_sample,
    sample_scene,
    write_video,
)
from .task import (
    SPECIAL_TOKENS,
    build_task_processor,
    build_task_tokenizer,
    byte_level_vocab,
    task_words,
    temporal_task_config,
)
from .train import train_temporal_task_model


__all__ = [
    "BAG_OF_FRAMES_CHANCE",
    "COLOURS",
    "ClipHashes",
    "IMAGE_SIZE",
    "NUM_FRAMES",
    "ORDER_DEPENDENT_TYPES",
    "QUESTIONS",
    "QUESTION_TYPES",
    "SPECIAL_TOKENS",
    "FIRST_RENDERING",
    "Rendering",
    "SMALL_FLASHES_RENDERING",
    "Scene",
    "TASK_RENDERING",
    "build_task_processor",
    "build_task_tokenizer",
    "byte_level_vocab",
    "distinct_clip_counts",
    "draw_clips",
    "evaluate_temporal_task",
    "generate_temporal_task",
    "load_temporal_task",
    "make_messages",
    "normalise_answer",
    "render_sample",
    "sample_scene",
    "task_words",
    "temporal_task_config",
    "train_temporal_task_model",
    "unseen_clips",
    "write_video",
]
