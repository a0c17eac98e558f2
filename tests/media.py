"""Test media written on the fly: tiny videos encoded with PyAV, images, and an offline Qwen2-style tokenizer."""

import fractions
from pathlib import Path

import av
import numpy as np
from PIL import Image
from transformers import Qwen2Tokenizer

from storm_hf.synthetic import SPECIAL_TOKENS, byte_level_vocab


def make_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with the Qwen2-VL special tokens: 256 byte tokens, a few merges, left padding."""
    vocab = byte_level_vocab()
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
    )


def make_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(num_frames, height, width, 3) uint8 frames that differ from each other: a moving bar on a per-frame colour."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_frames, 3))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = colours[:, None, None, :]
    for index in range(num_frames):
        frames[index, :, (3 * index) % width] = 255
        frames[index, (2 * index) % height, :, 1] = 0
    return frames


def write_video(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    fps: int = 10,
    pix_fmt: str = "yuv420p",
    gop_size: int | None = None,
    frame_durations_ms: list[int] | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
    hflip: bool = False,
    vflip: bool = False,
    start_ms: int = 0,
) -> Path:
    """Encode (num_frames, height, width, 3) uint8 `frames` to `path`; the extension picks the container.

    `frame_durations_ms` writes a variable frame rate (pts in milliseconds, the first at `start_ms`); `rotation`,
    `hflip` and `vflip` write a display matrix (degrees counter-clockwise, then mirrors, as PyAV's
    `set_display_rotation`).
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options or {})
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        if frame_durations_ms is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        container.start_encoding()  # writes the header even when there are no frames
        pts = start_ms
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if frame_durations_ms is not None:
                frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
                pts += frame_durations_ms[index]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all(path: Path) -> tuple[np.ndarray, list[float]]:
    """Reference decoding: every frame in order, (num_frames, height, width, 3) RGB, and its pts in seconds."""
    with av.open(str(path)) as container:
        decoded = [(frame.to_ndarray(format="rgb24"), float(frame.time)) for frame in container.decode(video=0)]
    return np.stack([frame for frame, _ in decoded]), [time for _, time in decoded]


def write_image(path: Path, height: int = 48, width: int = 64) -> Path:
    Image.fromarray(make_frames(1, height, width)[0]).save(path)
    return path


def make_processor(image_size: int = 56, num_frames: int = 4, temporal_pool_size: int = 2, **kwargs):
    """A StormProcessor for `image_size` pixels (the tiny test models use 56 = 4x4 patches of 14)."""
    from transformers import SiglipImageProcessor

    from storm_hf.processing import StormProcessor, StormVideoProcessor

    size = {"height": image_size, "width": image_size}
    return StormProcessor(
        image_processor=SiglipImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=make_tokenizer(),
        video_processor=StormVideoProcessor(
            size=size, num_frames=num_frames, temporal_pool_size=temporal_pool_size, **kwargs
        ),
    )
