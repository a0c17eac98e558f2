"""A synthetic video question-answering task that only a temporal encoder can solve.

Each video is 4 frames (64x64) of coloured shapes sitting in the cells of a 4x4 grid, on a background of vertical grey
bands (darker on the left, so that position is visible in the pixels), encoded with PyAV. Every order-dependent
question is built so that **the set of frames does not depend on the answer**: the scene (objects, colours, the
positions they take) is drawn first, and the answer only decides the *order* in which the frames are shown. A model
that sees any single frame, or an unordered bag of frames (for example a frame-by-frame encoder whose tokens are
averaged over time), cannot do better than chance on them; a model that puts temporal context into its tokens can.

| question type | question | answers | chance (bag of frames) |
|---|---|---|---|
| `direction` | Which way does the shape move, left or right? | left, right | 50% |
| `first` | Which colour appears first? | the colour of one of the two shapes | 50% |
| `reverse` | Does the shape turn back? | yes, no | 50% |
| `crossings` | How many times does the shape cross the middle line? | 1, 2, 3 | 33% |
| `colour` (control) | What colour is the shape? | red, green, blue, yellow | 25% (a single frame answers it) |

The task model (`temporal_task_config`) is STORM at toy scale: SigLIP on 16-pixel patches (one per grid cell), a 4x4
pixel-shuffle (one token per frame), Linear -> 2 bidirectional Mamba layers, temporal pooling k=4, a 2-layer Qwen2.
With 4 frames and k=4 a video reaches the LLM as ONE token: without the Mamba layers (`mamba_num_layers=0`) that token
is exactly the average of the frames' tokens, an unordered bag.

Main entry points:

- `render_sample(question_type, rng)`: frames `(num_frames, size, size, 3)` uint8, question, answer.
- `generate_temporal_task(out_dir, num_train, num_test, seed)`: writes the videos and a `datasets.DatasetDict`
  (`train`/`test`, columns `video`, `question_type`, `question`, `answer`, `messages`) and returns it.
- `load_temporal_task(out_dir)`: reloads it with absolute video paths.
- `build_task_tokenizer()`, `build_task_processor()`, `temporal_task_config()`: the tiny tokenizer, processor and
  model configuration the task is trained with.
- `train_temporal_task_model(model, processor, train_dataset, output_dir, max_steps)`: `StormTrainer` run.
- `evaluate_temporal_task(model, processor, dataset)`: greedy exact-match accuracy per question type.
"""

import fractions
import itertools
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .conversion.processor import VISION_SPECIAL_TOKENS


IMAGE_SIZE = 64
NUM_FRAMES = 4
CELL_SIZE = 16  # shapes sit in the cells of a 16-pixel grid, one vision patch each
OBJECT_HALF_SIZE = 6
PATCH_SIZE = 16  # one patch per grid cell
DOWNSAMPLE_RATIO = 4  # pixel-shuffle of the 4x4 patches: one visual token per frame
BACKGROUND_LEVELS = (16, 136)  # grey level of the leftmost and the rightmost band
MIDDLE_LINE = (150, 150, 150)
COLOURS = {
    "red": (225, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 240),
    "yellow": (235, 215, 40),
}
SHAPES = ("square", "circle")

QUESTIONS = {
    "direction": "Which way does the shape move, left or right?",
    "first": "Which colour appears first?",
    "reverse": "Does the shape turn back?",
    "crossings": "How many times does the shape cross the middle line?",
    "colour": "What colour is the shape?",
}
QUESTION_TYPES = tuple(QUESTIONS)
ORDER_DEPENDENT_TYPES = ("direction", "first", "reverse", "crossings")
# Accuracy of the best model that sees the frames as an unordered bag (uniform answers, bag independent of the answer).
BAG_OF_FRAMES_CHANCE = {"direction": 0.5, "first": 0.5, "reverse": 0.5, "crossings": 1 / 3, "colour": 1.0}

SYSTEM_PROMPT = "You are a helpful assistant."


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def draw_shape(frame: np.ndarray, shape: str, colour: str, centre_x: int, centre_y: int) -> None:
    """Draws a filled `shape` of side `2 * OBJECT_HALF_SIZE` centred at (centre_x, centre_y) into `frame` (H, W, 3)."""
    rows, cols = np.ogrid[: frame.shape[0], : frame.shape[1]]
    dy, dx = rows - centre_y + 0.5, cols - centre_x + 0.5
    if shape == "square":
        mask = (np.abs(dx) <= OBJECT_HALF_SIZE) & (np.abs(dy) <= OBJECT_HALF_SIZE)
    elif shape == "circle":
        mask = dx**2 + dy**2 <= OBJECT_HALF_SIZE**2
    else:
        raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}.")
    frame[mask] = COLOURS[colour]


def background(size: int = IMAGE_SIZE) -> np.ndarray:
    """The empty scene `(size, size, 3)`: vertical bands one grid cell wide, darker on the left, lighter on the right,
    so that every visual token shows where it is (the vision tower's learned position embeddings start near zero)."""
    columns = np.arange(size) // CELL_SIZE
    levels = BACKGROUND_LEVELS[0] + (BACKGROUND_LEVELS[1] - BACKGROUND_LEVELS[0]) * columns / max(1, columns[-1])
    return np.broadcast_to(np.round(levels).astype(np.uint8)[None, :, None], (size, size, 3)).copy()


def _blank(num_frames: int, size: int) -> np.ndarray:
    return np.repeat(background(size)[None], num_frames, axis=0)


def _object(rng: np.random.Generator, colours=tuple(COLOURS)) -> tuple[str, str]:
    return str(rng.choice(SHAPES)), str(rng.choice(colours))


def _cell_centre(index: int) -> int:
    """Pixel coordinate of the centre of grid cell `index` (cells are `CELL_SIZE` pixels, one vision patch each)."""
    return CELL_SIZE * index + CELL_SIZE // 2


def _random_cell_centre(rng: np.random.Generator, size: int) -> int:
    return _cell_centre(int(rng.integers(size // CELL_SIZE)))


def _sweep_positions(count: int, size: int) -> np.ndarray:
    """`count` increasing x centres evenly spaced from the first cell's centre to the last cell's."""
    return np.round(np.linspace(_cell_centre(0), _cell_centre(size // CELL_SIZE - 1), count)).astype(int)


def _moving_object(order: np.ndarray, x: np.ndarray, y: int, shape: str, colour: str, size: int, middle_line=False):
    frames = _blank(len(order), size)
    for frame, position in zip(frames, order):
        if middle_line:
            frame[:, size // 2 - 1 : size // 2 + 1] = MIDDLE_LINE
        draw_shape(frame, shape, colour, int(x[position]), y)
    return frames


def _one_turn_orders(count: int) -> list[tuple[int, ...]]:
    """Orders of `count` increasing positions that change direction exactly once (up then down, or down then up)."""
    orders = []
    for order in itertools.permutations(range(count)):
        signs = np.sign(np.diff(order))
        if int((signs[1:] != signs[:-1]).sum()) == 1:
            orders.append(order)
    return orders


def _side_patterns(num_frames: int) -> dict[int, list[tuple[int, ...]]]:
    """Left (0) / right (1) patterns with as many frames on each side, grouped by their number of side changes."""
    patterns = defaultdict(list)
    for pattern in itertools.product((0, 1), repeat=num_frames):
        if sum(pattern) * 2 == num_frames:
            patterns[int(np.count_nonzero(np.diff(pattern)))].append(pattern)
    return dict(patterns)


def render_direction(rng, variant: int, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE):
    """One shape sweeping across a random row, shown left to right (variant 1) or right to left (variant 0)."""
    shape, colour = _object(rng)
    x = _sweep_positions(num_frames, size)
    y = _random_cell_centre(rng, size)
    order = np.arange(num_frames) if variant == 1 else np.arange(num_frames)[::-1]
    return _moving_object(order, x, y, shape, colour, size), ("left", "right")[variant]


def render_first(rng, variant: int, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE):
    """Two shapes of different colours; the first is visible in frames [0, n-2], the second in [1, n-1].

    Variant 0 shows object A first, variant 1 object B: reversing time swaps the roles, so the bag is the same.
    """
    colour_a, colour_b = (str(c) for c in rng.choice(list(COLOURS), size=2, replace=False))
    shape_a, shape_b = str(rng.choice(SHAPES)), str(rng.choice(SHAPES))
    # Two different cells of the grid.
    cells = size // CELL_SIZE
    first_cell, second_cell = (int(c) for c in rng.choice(cells * cells, size=2, replace=False))
    place_a, place_b = ((_cell_centre(c % cells), _cell_centre(c // cells)) for c in (first_cell, second_cell))
    objects = [(shape_a, colour_a, place_a), (shape_b, colour_b, place_b)]
    first, second = objects if variant == 0 else objects[::-1]
    frames = _blank(num_frames, size)
    for index, frame in enumerate(frames):
        for (shape, colour, (x, y)), visible in ((first, index <= num_frames - 2), (second, index >= 1)):
            if visible:
                draw_shape(frame, shape, colour, x, y)
    return frames, first[1]


def render_reverse(rng, variant: int, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE):
    """One shape at `num_frames` evenly spaced places of a random row: visited monotonically (variant 0, "no") or in
    an order that turns back exactly once (variant 1, "yes")."""
    shape, colour = _object(rng)
    x = _sweep_positions(num_frames, size)
    y = _random_cell_centre(rng, size)
    if variant == 0:
        order = np.arange(num_frames) if rng.random() < 0.5 else np.arange(num_frames)[::-1]
    else:
        turns = _one_turn_orders(num_frames)
        order = np.asarray(turns[int(rng.integers(len(turns)))])
    return _moving_object(order, x, y, shape, colour, size), ("no", "yes")[variant]


def render_crossings(rng, variant: int, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE):
    """One shape, half of the frames on the left of the middle line and half on the right; variant `c` orders them so
    that the shape crosses the line `c` times (1 <= c <= num_frames - 1)."""
    shape, colour = _object(rng)
    cells = size // CELL_SIZE
    y = _random_cell_centre(rng, size)
    per_side = num_frames // 2
    left = [_cell_centre(int(c)) for c in rng.integers(0, cells // 2, size=per_side)]
    right = [_cell_centre(int(c)) for c in rng.integers(cells // 2, cells, size=per_side)]
    patterns = _side_patterns(num_frames)[variant]
    pattern = patterns[int(rng.integers(len(patterns)))]
    queues = [list(rng.permutation(left)), list(rng.permutation(right))]
    x = np.asarray([queues[side].pop() for side in pattern])
    return _moving_object(np.arange(num_frames), x, y, shape, colour, size, middle_line=True), str(variant)


def render_colour(rng, variant: int, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE):
    """Control question, answerable from any single frame: a still shape of colour `list(COLOURS)[variant]`."""
    shape = str(rng.choice(SHAPES))
    colour = list(COLOURS)[variant]
    x, y = _random_cell_centre(rng, size), _random_cell_centre(rng, size)
    return _moving_object(np.zeros(num_frames, dtype=int), np.array([x]), y, shape, colour, size), colour


RENDERERS = {
    "direction": render_direction,
    "first": render_first,
    "reverse": render_reverse,
    "crossings": render_crossings,
    "colour": render_colour,
}


def num_variants(question_type: str, num_frames: int = NUM_FRAMES) -> list[int]:
    """The variants of a question type; drawn uniformly, so that the answers are balanced."""
    if question_type == "crossings":
        return sorted(_side_patterns(num_frames))
    return list(range({"direction": 2, "first": 2, "reverse": 2, "colour": len(COLOURS)}[question_type]))


def render_sample(
    question_type: str, rng: np.random.Generator, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE, variant=None
) -> tuple[np.ndarray, str, str]:
    """Renders one video and its question.

    Returns frames `(num_frames, size, size, 3)` uint8 RGB, the question and the one-word answer. `variant` (default:
    drawn from `rng`) picks the answer; for an order-dependent question the same `rng` state renders the same bag of
    frames for every variant, only in a different order.
    """
    if question_type not in RENDERERS:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {QUESTION_TYPES}.")
    if num_frames < 2 or num_frames % 2:
        raise ValueError(f"`num_frames` must be an even number >= 2, got {num_frames}.")
    variants = num_variants(question_type, num_frames)
    if variant is None:
        variant = variants[int(rng.integers(len(variants)))]
    frames, answer = RENDERERS[question_type](rng, variant, num_frames=num_frames, size=size)
    return frames, QUESTIONS[question_type], answer


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 4) -> None:
    """Encodes `frames` `(num_frames, H, W, 3)` uint8 as near-lossless H.264 (every frame a keyframe) with PyAV."""
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"  # no chroma subsampling: small coloured shapes keep their colour at the edges
        stream.options = {"crf": "4", "g": "1"}
        stream.time_base = fractions.Fraction(1, fps)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


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


def generate_temporal_task(
    out_dir: str | os.PathLike,
    num_train: int = 2000,
    num_test: int = 500,
    seed: int = 0,
    question_types=QUESTION_TYPES,
    num_frames: int = NUM_FRAMES,
    size: int = IMAGE_SIZE,
):
    """Renders the task into `out_dir` and returns it as a `datasets.DatasetDict` with `train` and `test` splits.

    Writes `out_dir/videos/{split}/{index:06d}.mp4`, the dataset (`out_dir/dataset`, `DatasetDict.save_to_disk`) and
    `out_dir/task.json` (the arguments). Question types cycle through `question_types`, so every split is balanced;
    train and test come from independent random streams of `seed`; a split of size 0 is left out. Columns: `video`
    (path relative to `out_dir`),
    `question_type`, `question`, `answer`, `messages` (chat format, video path relative to `out_dir`; use
    `load_temporal_task`, which makes them absolute).
    """
    import datasets

    out_dir = Path(out_dir)
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"Unknown question types {sorted(unknown)}; use some of {QUESTION_TYPES}.")
    splits = {}
    for split_index, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        if count == 0:
            continue
        rng = np.random.default_rng([seed, split_index])
        (out_dir / "videos" / split).mkdir(parents=True, exist_ok=True)
        rows = defaultdict(list)
        for index in range(count):
            question_type = question_types[index % len(question_types)]
            frames, question, answer = render_sample(question_type, rng, num_frames=num_frames, size=size)
            video = f"videos/{split}/{index:06d}.mp4"
            write_video(out_dir / video, frames)
            rows["video"].append(video)
            rows["question_type"].append(question_type)
            rows["question"].append(question)
            rows["answer"].append(answer)
            rows["messages"].append(make_messages(video, question, answer))
        splits[split] = datasets.Dataset.from_dict(dict(rows))
    dataset = datasets.DatasetDict(splits)
    dataset.save_to_disk(str(out_dir / "dataset"))
    arguments = dict(
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        question_types=list(question_types),
        num_frames=num_frames,
        size=size,
    )
    (out_dir / "task.json").write_text(json.dumps(arguments, indent=2) + "\n")
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


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer, processor and model of the task
# --------------------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *VISION_SPECIAL_TOKENS)


def byte_level_vocab() -> dict[str, int]:
    """The 256 byte tokens of a byte-level BPE vocabulary: GPT-2's printable stand-in of each byte -> the byte value."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    stand_ins = bytes_to_unicode()
    return {stand_ins[byte]: byte for byte in range(256)}


def task_words() -> list[str]:
    """Every word of the task's prompts and answers (the chat template's role names and system prompt included)."""
    text = " ".join([SYSTEM_PROMPT, "system user assistant", *QUESTIONS.values(), *COLOURS, "left right yes no"])
    words = {word.strip("?,.") for word in text.split()}
    return sorted(word for word in words if word)


def build_task_tokenizer():
    """A byte-level BPE tokenizer with the Qwen2-VL special tokens in which every word of the task is one token.

    Any text still tokenizes (byte fallback through the 256 byte tokens); the task's words, with and without a leading
    space, are single tokens, so that answers are one token and prompts are short. `eos_token` is `<|im_end|>`, the end
    of a ChatML turn, and padding is on the left (for batched generation).
    """
    from transformers import Qwen2Tokenizer

    vocab = byte_level_vocab()
    merges = []

    def make(vocab, merges):
        return Qwen2Tokenizer(
            vocab=dict(vocab),
            merges=list(merges),
            unk_token="<|endoftext|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=list(SPECIAL_TOKENS[1:]),
            padding_side="left",
        )

    # Grow the merges until every word is one token: each round merges the first two pieces of every word that is still
    # split. A merge added later has a later rank, so it never changes how an already whole word is split.
    texts = [text for word in task_words() for text in (word, " " + word)]
    while True:
        tokenizer = make(vocab, merges)
        added = False
        for text in texts:
            pieces = tokenizer.tokenize(text)
            if len(pieces) > 1 and pieces[0] + pieces[1] not in vocab:
                vocab[pieces[0] + pieces[1]] = len(vocab)
                merges.append((pieces[0], pieces[1]))
                added = True
        if not added:
            break
    for text in texts:
        if len(tokenizer.tokenize(text)) != 1:
            raise RuntimeError(f"The task tokenizer splits {text!r} into {tokenizer.tokenize(text)}.")
    return tokenizer


def build_task_processor(
    tokenizer=None,
    num_frames: int = NUM_FRAMES,
    size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    downsample_ratio: int = DOWNSAMPLE_RATIO,
    temporal_pool_size: int = 4,
):
    """A `StormProcessor` matching `temporal_task_config`: the task tokenizer, `size`x`size` frames, `num_frames`
    frames sampled per video. Saves and loads like any processor (`save_pretrained`, `AutoProcessor`)."""
    from transformers import SiglipImageProcessor

    from .processing import StormProcessor, StormVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_task_tokenizer()
    resize = {"height": size, "width": size}
    return StormProcessor(
        image_processor=SiglipImageProcessor(size=resize),
        tokenizer=tokenizer,
        video_processor=StormVideoProcessor(size=resize, num_frames=num_frames),
        patch_size=patch_size,
        downsample_ratio=downsample_ratio,
        temporal_pool_size=temporal_pool_size,
        spatial_pool_size=1,
    )


def temporal_task_config(
    tokenizer=None,
    mamba_num_layers: int = 2,
    size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    downsample_ratio: int = DOWNSAMPLE_RATIO,
    **overrides,
):
    """A tiny STORM (under 1M parameters) for the task: SigLIP (2 layers, 64 wide) on 64 px frames in 16 px patches
    (a 4x4 grid), a 4x4 pixel-shuffle (one 1024-wide token per frame), Linear -> `mamba_num_layers` bidirectional
    Mamba layers 128 wide, temporal pooling k=4, a 2-layer 128-wide Qwen2 over the task tokenizer's vocabulary.

    `mamba_num_layers=0` gives the same model without a temporal encoder (pixel-shuffle -> Linear -> pooling).
    Keyword arguments override `StormConfig` fields.
    """
    from .modeling import StormConfig

    tokenizer = tokenizer if tokenizer is not None else build_task_tokenizer()
    settings = dict(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=size,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_feature_layer=-1,
        downsample_ratio=downsample_ratio,
        mamba_num_layers=mamba_num_layers,
        mamba_state_size=8,
        temporal_pool_size=4,
        spatial_pool_size=1,
    )
    settings.update(overrides)
    return StormConfig(**settings)


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def train_temporal_task_model(
    model,
    processor,
    train_dataset,
    output_dir: str | os.PathLike,
    max_steps: int = 1500,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    language_model_learning_rate: float | None = 2e-4,
    warmup_steps: int = 30,
    seed: int = 0,
    logging_steps: int = 100,
    **training_arguments,
):
    """Trains `model` on the task with `StormTrainer` (all parameters, the paper's `sft` stage) and returns the
    `TrainOutput`.

    AdamW without weight decay, cosine schedule after `warmup_steps`, gradients clipped to norm 1. The vision tower and
    the projector train at `learning_rate`, the LLM (and LM head) at `language_model_learning_rate` (None: the same):
    trained from scratch at one rate, the LLM learns the answer priors within a few hundred steps and the order-
    dependent questions then sit at chance for a long, seed-dependent time; a 5x slower LLM lets the visual features
    carry the answer first (NVILA likewise trains its projector much faster than its LLM). Nothing is saved to
    `output_dir` except the Trainer's logs; extra keyword arguments go to `TrainingArguments`."""
    from transformers import TrainingArguments

    from .training import StormDataCollator, StormTrainer, apply_training_stage

    apply_training_stage(model, "sft")
    settings = dict(
        output_dir=os.fspath(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    settings.update(training_arguments)
    trainer = StormTrainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=train_dataset,
        data_collator=StormDataCollator(processor),
        module_learning_rates=(
            None
            if language_model_learning_rate is None
            else {"language_model": language_model_learning_rate, "lm_head": language_model_learning_rate}
        ),
    )
    return trainer.train()


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def normalise_answer(text: str) -> str:
    return text.strip().strip(".").lower()


def evaluate_temporal_task(model, processor, dataset, batch_size: int = 32, max_new_tokens: int = 3) -> dict[str, float]:
    """Greedy exact-match accuracy per question type on `dataset` (rows with `messages`, `answer`, `question_type`).

    The assistant turn is dropped from each conversation and the model generates the answer. Returns
    `{question_type: accuracy, ..., "order_dependent": mean over order-dependent rows, "all": mean over all rows}`.
    """
    import torch

    from .training import clean_messages

    model.eval()
    correct, total = defaultdict(int), defaultdict(int)
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        conversations = [
            [message for message in clean_messages(messages) if message["role"] != "assistant"]
            for messages in rows["messages"]
        ]
        inputs = processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
        inputs.pop("video_metadata", None)
        with torch.no_grad():
            generated = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
            )
        answers = processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])
        for answer, expected, question_type in zip(answers, rows["answer"], rows["question_type"]):
            hit = normalise_answer(answer) == normalise_answer(expected)
            for key in (question_type, "all") + (("order_dependent",) if question_type in ORDER_DEPENDENT_TYPES else ()):
                correct[key] += hit
                total[key] += 1
    return {key: correct[key] / total[key] for key in total}


__all__ = [
    "BAG_OF_FRAMES_CHANCE",
    "ORDER_DEPENDENT_TYPES",
    "QUESTION_TYPES",
    "build_task_processor",
    "build_task_tokenizer",
    "evaluate_temporal_task",
    "generate_temporal_task",
    "load_temporal_task",
    "make_messages",
    "render_sample",
    "temporal_task_config",
    "train_temporal_task_model",
    "write_video",
]
