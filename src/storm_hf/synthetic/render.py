"""Rendering of the synthetic temporal task: scenes, their answer variants, and content hashes.

A scene is drawn once: a background (a gradient between two random colours, horizontal or vertical), 0-1 static grey
distractor shapes, the coloured shape(s) the question is about (shape, size, colour jitter and position random), and
Gaussian pixel noise of a random strength. It is stored as a few clean *states* (frames without noise) and the
*canonical* sequence of states, one per frame, with the noise of every frame. Each answer is a *variant*: a
permutation of the canonical frames. So the answer variants of one scene show exactly the same multiset of frames
(noise included), only in another order: no single frame and no unordered bag of frames tells them apart.

| type | question | answers | what decides it |
|---|---|---|---|
| `first` | Which colour flashes first? | one of the two colours | the order of two brief (1-3 frame) flashes |
| `count` | How many times does the shape flash? | 1, 2, 3 | three flash frames grouped into 1, 2 or 3 runs |
| `return` | Does the shape come back? | yes, no | a 1-3 frame excursion, then a return (often soon) or not |
| `direction` | Which way does the shape move, left or right? | left, right | a sweep, played forwards or backwards |
"""

import fractions
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


IMAGE_SIZE = 32
NUM_FRAMES = 32
PATCH_SIZE = 8  # a 4x4 grid of vision patches per frame
DOWNSAMPLE_RATIO = 4  # pixel-shuffle of the 4x4 patches: one visual token per frame
COLOURS = {"red": (225, 40, 40), "green": (40, 200, 60), "blue": (50, 100, 240), "yellow": (235, 215, 40)}
COLOUR_JITTER = 20  # per channel, so that no two scenes share an exact shade
SHAPES = ("square", "circle", "diamond")
MAX_EVENT_FRAMES = 3  # brief events: flashes and excursions last 1-3 frames

QUESTIONS = {
    "first": "Which colour flashes first?",
    "count": "How many times does the shape flash?",
    "return": "Does the shape come back?",
    "direction": "Which way does the shape move, left or right?",
}
QUESTION_TYPES = tuple(QUESTIONS)
ORDER_DEPENDENT_TYPES = QUESTION_TYPES  # every answer is decided by the order of the frames alone
# Accuracy of the best model that sees the frames as an unordered bag: the variants of a scene share their bag and the
# answers are uniform over the variants (for `first`, over the two colours that flash).
BAG_OF_FRAMES_CHANCE = {"first": 1 / 2, "count": 1 / 3, "return": 1 / 2, "direction": 1 / 2}


@dataclass
class Scene:
    """One drawn scene of a question type and all its answer variants.

    states: `(num_states, size, size, 3)` uint8, the distinct clean frames. canonical: `(num_frames,)` the state of
    each frame before reordering. noise: `(num_frames, size, size, 3)` int16, the noise of each canonical frame.
    orders: one permutation of `range(num_frames)` per variant (frame `t` of variant `v` is canonical frame
    `orders[v][t]`). answers: the answer of each variant.
    """

    question_type: str
    states: np.ndarray
    canonical: np.ndarray
    noise: np.ndarray
    orders: list[np.ndarray]
    answers: list[str]

    def frames(self, variant: int) -> np.ndarray:
        """The frames `(num_frames, size, size, 3)` uint8 of `variant`."""
        noisy = np.clip(self.states[self.canonical].astype(np.int16) + self.noise, 0, 255).astype(np.uint8)
        return noisy[self.orders[variant]]

    def clean_frames(self, variant: int) -> np.ndarray:
        """The frames of `variant` without noise."""
        return self.states[self.canonical[self.orders[variant]]]

    def clip_hash(self, variant: int) -> str:
        """sha256 of the clean frames of `variant`, in order: equal for two clips that differ at most by noise."""
        return _sequence_hash(self._state_hashes()[self.canonical[self.orders[variant]]])

    def bag_hash(self) -> str:
        """sha256 of the sorted clean frames: the same for every variant of the scene (its unordered bag)."""
        return _sequence_hash(sorted(self._state_hashes()[self.canonical]))

    def _state_hashes(self) -> np.ndarray:
        return np.array([hashlib.sha256(state.tobytes()).hexdigest() for state in self.states])


def _sequence_hash(hashes) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------------


def draw_shape(frame: np.ndarray, shape: str, colour, centre_x: float, centre_y: float, half_size: int) -> None:
    """Draws a filled `shape` of half-side `half_size` centred at (centre_x, centre_y) into `frame` (H, W, 3)."""
    rows, cols = np.ogrid[: frame.shape[0], : frame.shape[1]]
    dy, dx = rows - centre_y + 0.5, cols - centre_x + 0.5
    if shape == "square":
        mask = (np.abs(dx) <= half_size) & (np.abs(dy) <= half_size)
    elif shape == "circle":
        mask = dx**2 + dy**2 <= half_size**2
    elif shape == "diamond":
        mask = np.abs(dx) + np.abs(dy) <= half_size * 1.3
    else:
        raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}.")
    frame[mask] = colour


@dataclass
class _Object:
    shape: str
    colour: np.ndarray
    half_size: int

    def draw(self, frame: np.ndarray, x: float, y: float) -> None:
        draw_shape(frame, self.shape, self.colour, x, y, self.half_size)


def _half_sizes(size: int) -> tuple[int, int]:
    """The range [low, high) of the half-side of the task's moving shapes in a `size`-pixel frame (3-6 px at 32)."""
    return size // 10, size // 5 + 1


def _flash_half_sizes(size: int) -> tuple[int, int]:
    """The range [low, high) of the half-side of the flashing shapes (`first`, `count`): 7-10 px at 32, so that a
    one-frame flash covers a sixth to a third of its frame. With the moving shapes' 3-6 px, neither STORM nor Linear
    learned `first` in 600 steps on that question alone (benchmarks/results/brief_events_diagnosis_small_flashes.md;
    at 7-10 px: brief_events_diagnosis.md)."""
    return size // 4 - 1, size // 3 + 1


@dataclass(frozen=True)
class Rendering:
    """The renderer's difficulty settings. `TASK_RENDERING` is the task's: with shapes of half-side 2-4 px on gradients
    of 0-140 under bright distractors and noise up to 8 (`FIRST_RENDERING`), no question type was learned in short
    runs; the task's settings keep every kind of variety and make the shapes stand out
    (benchmarks/results/temporal_task_diagnosis.md)."""

    background_max: int = 70  # background gradients run between two random colours with channels in [0, this)
    max_distractors: int = 1
    distractor_grey: tuple[int, int] = (90, 150)  # the grey level range of the static distractors
    max_noise_std: float = 4.0
    half_sizes: Callable[[int], tuple[int, int]] = _half_sizes  # of the moving shapes, from the frame size
    flash_half_sizes: Callable[[int], tuple[int, int]] = _flash_half_sizes  # of the flashing shapes


TASK_RENDERING = Rendering()
# The task's first rendering (benchmarks/diagnose_temporal_task.py compares it with the task's).
FIRST_RENDERING = Rendering(
    background_max=140,
    max_distractors=2,
    distractor_grey=(150, 256),
    max_noise_std=8.0,
    half_sizes=lambda size: (max(2, size // 16), size // 7 + 1),
    flash_half_sizes=lambda size: (max(2, size // 16), size // 7 + 1),
)
# The rendering before the flashing shapes were enlarged: they had the moving shapes' half-sides (3-6 px). It draws the
# same random numbers as the task's, so the same clips up to the flashes' sizes.
SMALL_FLASHES_RENDERING = Rendering(flash_half_sizes=_half_sizes)


def _random_object(rng: np.random.Generator, colour_name: str, half_sizes: tuple[int, int]) -> _Object:
    """A shape of `colour_name` (jittered) with a half-side drawn from the range `half_sizes`."""
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    colour = np.clip(np.asarray(COLOURS[colour_name]) + jitter, 0, 255).astype(np.uint8)
    return _Object(str(rng.choice(SHAPES)), colour, int(rng.integers(*half_sizes)))


def _random_position(rng: np.random.Generator, size: int, rendering: Rendering) -> tuple[int, int]:
    margin = rendering.half_sizes(size)[1]
    return int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin))


def _background(rng: np.random.Generator, size: int, rendering: Rendering) -> np.ndarray:
    """A gradient between two random dark colours, horizontal or vertical, with 0-`max_distractors` static grey
    distractors."""
    start, end = rng.integers(0, rendering.background_max, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None]
    line = np.round(start + (end - start) * ramp).astype(np.uint8)  # (size, 3)
    frame = np.repeat(line[None], size, axis=0) if rng.random() < 0.5 else np.repeat(line[:, None], size, axis=1)
    for _ in range(int(rng.integers(0, rendering.max_distractors + 1))):
        grey = np.full(3, rng.integers(*rendering.distractor_grey), dtype=np.uint8)
        shape = str(rng.choice(SHAPES))
        draw_shape(frame, shape, grey, *_random_position(rng, size, rendering), rendering.half_sizes(size)[0] - 1)
    return np.ascontiguousarray(frame)


def _noise(rng: np.random.Generator, num_frames: int, size: int, rendering: Rendering) -> np.ndarray:
    std = rng.uniform(0.0, rendering.max_noise_std)
    return np.round(std * rng.standard_normal((num_frames, size, size, 3), dtype=np.float32)).astype(np.int16)


def _with(background: np.ndarray, *placed) -> np.ndarray:
    """A copy of `background` with each `(object, x, y)` of `placed` drawn on it."""
    frame = background.copy()
    for item, x, y in placed:
        item.draw(frame, x, y)
    return frame


def _run_starts(rng: np.random.Generator, lengths: list[int], num_frames: int, min_gap: int = 1) -> list[int]:
    """Random start frames of runs of `lengths` (in this order) inside `num_frames`, at least `min_gap` frames apart."""
    slack = num_frames - sum(lengths) - min_gap * (len(lengths) - 1)
    # Spread the slack over the len(lengths) + 1 gaps (before, between, after) with uniformly random cut points.
    cuts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))
    return [int(cut) + sum(lengths[:index]) + min_gap * index for index, cut in enumerate(cuts)]


def _place(num_frames: int, event_slots: np.ndarray, event_times: list[int]) -> np.ndarray:
    """The permutation that puts canonical frames `event_slots` at `event_times` and the other canonical frames, in
    their canonical order, at the remaining times."""
    order = np.empty(num_frames, dtype=int)
    order[event_times] = event_slots
    everything = np.arange(num_frames)
    order[np.setdiff1d(everything, event_times)] = np.setdiff1d(everything, event_slots)
    return order


# --------------------------------------------------------------------------------------------------------------------
# Question types
# --------------------------------------------------------------------------------------------------------------------


def scene_first(rng: np.random.Generator, num_frames: int, size: int, rendering: Rendering) -> Scene:
    """Two flashes of different colours, 1-3 frames each, at random times at least 1 frame apart (near or far).
    Variant 0 plays the clip forwards (A flashes first), variant 1 backwards (B first)."""
    names = [str(name) for name in rng.choice(list(COLOURS), size=2, replace=False)]
    background = _background(rng, size, rendering)
    objects = [
        (_random_object(rng, name, rendering.flash_half_sizes(size)), *_random_position(rng, size, rendering))
        for name in names
    ]
    states = np.stack([background] + [_with(background, placed) for placed in objects])
    lengths = [int(n) for n in rng.integers(1, MAX_EVENT_FRAMES + 1, size=2)]
    starts = _run_starts(rng, lengths, num_frames)
    canonical = np.zeros(num_frames, dtype=int)
    for state, start, length in zip((1, 2), starts, lengths):
        canonical[start : start + length] = state
    forwards = np.arange(num_frames)
    noise = _noise(rng, num_frames, size, rendering)
    return Scene("first", states, canonical, noise, [forwards, forwards[::-1]], names)


def scene_count(rng: np.random.Generator, num_frames: int, size: int, rendering: Rendering) -> Scene:
    """The shape appears in 3 frames (each with its own noise), grouped into `c` runs for the variant with answer `c`:
    one run of 3, runs of 2 and 1 (either order), or three single frames, at random times at least 1 frame apart."""
    background = _background(rng, size, rendering)
    colour = str(rng.choice(list(COLOURS)))
    item = _random_object(rng, colour, rendering.flash_half_sizes(size))
    placed = (item, *_random_position(rng, size, rendering))
    states = np.stack([background, _with(background, placed)])
    flashes = 3
    canonical = np.array([0] * (num_frames - flashes) + [1] * flashes)
    event_slots = np.arange(num_frames - flashes, num_frames)
    orders = []
    for lengths in ([3], [2, 1] if rng.random() < 0.5 else [1, 2], [1, 1, 1]):
        starts = _run_starts(rng, lengths, num_frames)
        times = [start + offset for start, length in zip(starts, lengths) for offset in range(length)]
        orders.append(_place(num_frames, event_slots, times))
    return Scene("count", states, canonical, _noise(rng, num_frames, size, rendering), orders, ["1", "2", "3"])


def scene_return(rng: np.random.Generator, num_frames: int, size: int, rendering: Rendering) -> Scene:
    """The shape sits at home and is away (another place at least a shape's width off) for 1-3 frames. Variant 0
    ("no"): the excursion ends the clip. Variant 1 ("yes"): it is followed by 1-4 frames at home, so the departure and
    the return often fall inside the last pooling window of 4 frames."""
    background = _background(rng, size, rendering)
    item = _random_object(rng, str(rng.choice(list(COLOURS))), rendering.half_sizes(size))
    while True:  # both places drawn again: from a central home no place may be far enough for a large shape
        home, away = _random_position(rng, size, rendering), _random_position(rng, size, rendering)
        if max(abs(away[0] - home[0]), abs(away[1] - home[1])) > 2 * item.half_size:
            break
    states = np.stack([_with(background, (item, *home)), _with(background, (item, *away))])
    away_frames = int(rng.integers(1, MAX_EVENT_FRAMES + 1))
    canonical = np.array([0] * (num_frames - away_frames) + [1] * away_frames)
    stays = np.arange(num_frames)
    back_home = int(rng.integers(1, 5))
    event_slots = np.arange(num_frames - away_frames, num_frames)
    times = list(range(num_frames - away_frames - back_home, num_frames - back_home))
    returns = _place(num_frames, event_slots, times)
    return Scene("return", states, canonical, _noise(rng, num_frames, size, rendering), [stays, returns], ["no", "yes"])


def scene_direction(rng: np.random.Generator, num_frames: int, size: int, rendering: Rendering) -> Scene:
    """The shape sweeps along a random row at a random speed over a random span of the clip (still before and after).
    Variant 0 plays it backwards ("left"), variant 1 forwards ("right")."""
    background = _background(rng, size, rendering)
    item = _random_object(rng, str(rng.choice(list(COLOURS))), rendering.half_sizes(size))
    margin = rendering.half_sizes(size)[1]
    moving = int(rng.integers(2, num_frames + 1))  # frames during which the shape moves
    first_move = int(rng.integers(0, num_frames - moving + 1))
    left = int(rng.integers(margin, size // 2 - 2))
    right = int(rng.integers(size // 2 + 2, size - margin))
    y = int(rng.integers(margin, size - margin))
    xs = np.round(np.linspace(left, right, moving)).astype(int)
    states = np.stack([_with(background, (item, x, y)) for x in xs])
    canonical = np.concatenate(
        [np.zeros(first_move, int), np.arange(moving), np.full(num_frames - moving - first_move, moving - 1)]
    )
    forwards = np.arange(num_frames)
    noise = _noise(rng, num_frames, size, rendering)
    return Scene("direction", states, canonical, noise, [forwards[::-1], forwards], ["left", "right"])


SCENES = {"first": scene_first, "count": scene_count, "return": scene_return, "direction": scene_direction}


def sample_scene(
    question_type: str,
    rng: np.random.Generator,
    num_frames: int = NUM_FRAMES,
    size: int = IMAGE_SIZE,
    rendering: Rendering = TASK_RENDERING,
) -> Scene:
    """Draws one scene of `question_type` with all its answer variants, drawn as `rendering` says."""
    if question_type not in SCENES:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {QUESTION_TYPES}.")
    if num_frames < 4:
        raise ValueError(f"`num_frames` must be >= 4 (room for two flashes and a gap), got {num_frames}.")
    if size < 24:
        raise ValueError(f"`size` must be >= 24 pixels (room for a shape to move), got {size}.")
    return SCENES[question_type](rng, num_frames, size, rendering)


def render_sample(
    question_type: str,
    rng: np.random.Generator,
    num_frames: int = NUM_FRAMES,
    size: int = IMAGE_SIZE,
    variant=None,
    rendering: Rendering = TASK_RENDERING,
) -> tuple[np.ndarray, str, str]:
    """Renders one video and its question.

    Returns frames `(num_frames, size, size, 3)` uint8 RGB, the question and the one-word answer. `variant` (default:
    drawn from `rng` after the scene, uniformly) picks the answer; the same `rng` state draws the same scene for every
    variant, so the variants of one seed share their bag of frames and differ only in order.
    """
    scene = sample_scene(question_type, rng, num_frames, size, rendering)
    if variant is None:
        variant = int(rng.integers(len(scene.orders)))
    return scene.frames(variant), QUESTIONS[question_type], scene.answers[variant]


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> None:
    """Encodes `frames` `(num_frames, H, W, 3)` uint8 as H.264 with PyAV, every frame a keyframe, lossless in YUV 4:4:4:
    decoded frames differ from `frames` only by the RGB <-> YUV rounding (at most 2 levels measured). At the former
    CRF 4, the edges of the large flashing shapes came back up to 24 levels off."""
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"  # no chroma subsampling: small coloured shapes keep their colour at the edges
        stream.options = {"crf": "0", "g": "1"}
        stream.time_base = fractions.Fraction(1, fps)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
