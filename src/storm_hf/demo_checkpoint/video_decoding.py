"""Read the frames a sampler asks for from a video file with PyAV, decoding as little as possible.

One demux pass (no decoding) lists every frame's presentation timestamp (pts) and the keyframes, which gives the exact
frame count (also for webm/mkv, which store none) and the real time of every frame (also for variable frame rate).
Frames are then decoded in presentation order: to reach a sampled frame the reader seeks to the keyframe before it when
that keyframe lies beyond what was already decoded, and otherwise reads on; frames that no later frame references and
that were not asked for are skipped by the decoder.
"""

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Union

import numpy as np
from transformers.video_utils import VideoMetadata


VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# Demuxers of still images: PyAV opens a .png/.jpg as a one-frame "video".
_IMAGE_FORMATS = {"image2", "image2pipe"}


@dataclass
class StormVideoMetadata(VideoMetadata):
    """`VideoMetadata` whose `timestamps` are the container's presentation times of the sampled frames (in seconds)."""

    frames_timestamps: list[float] | None = None

    @property
    def timestamps(self) -> list[float]:
        if self.frames_timestamps is not None:
            return self.frames_timestamps
        return super().timestamps


class VideoDecodingError(ValueError):
    """A video could not be read; the message names the input and says what to do."""


def is_video_source(video) -> bool:
    """Whether `video` is an encoded video (path, bytes or binary file object) rather than decoded frames."""
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read")


def describe_video_source(source: VideoSource) -> str:
    """Short name of a video source for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"the {len(source)} bytes passed as a video"
    return f"the file object {getattr(source, 'name', type(source).__name__)!r}"


@dataclass
class _FrameIndex:
    """Every frame of a video stream, from one demux pass.

    pts: (num_frames,) presentation timestamps in presentation order (stream time base).
    keyframe_pts: (num_keyframes,) sorted pts of the keyframes, where decoding can start.
    """

    pts: np.ndarray
    keyframe_pts: np.ndarray

    @classmethod
    def from_demux(cls, container, stream, name: str) -> "_FrameIndex":
        pts, keyframe_pts = [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                raise VideoDecodingError(f"{name} has frames without timestamps; re-mux it (e.g. to mp4) first.")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframe_pts.append(packet.pts)
        pts = np.sort(np.asarray(pts, dtype=np.int64))
        if len(np.unique(pts)) != len(pts):
            raise VideoDecodingError(f"{name} has frames with equal timestamps; re-mux it (e.g. to mp4) first.")
        return cls(pts=pts, keyframe_pts=np.sort(np.asarray(keyframe_pts, dtype=np.int64)))

    def keyframe_before(self, pts: int) -> int:
        """pts of the last keyframe at or before `pts` (the first frame when none is flagged)."""
        position = np.searchsorted(self.keyframe_pts, pts, side="right") - 1
        return int(self.keyframe_pts[position]) if position >= 0 else int(self.pts[0])


def read_video(
    source: VideoSource, sample_indices_fn: Callable[..., np.ndarray] | None = None
) -> tuple[np.ndarray, StormVideoMetadata]:
    """Decode the frames of `source` chosen by `sample_indices_fn(metadata=...)` (all frames when `None`).

    Returns:
        frames: uint8 array (num_sampled_frames, height, width, 3), RGB, upright (the display rotation applied).
        metadata: `StormVideoMetadata` of the whole video, with `frames_indices` and `frames_timestamps` of the
            sampled frames.
    """
    import av

    name = describe_video_source(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise FileNotFoundError(f"Video file {name} does not exist; pass an existing path, bytes or a file object.")
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        container = av.open(source if hasattr(source, "read") else os.fspath(source), mode="r")
    except av.FFmpegError as error:
        raise VideoDecodingError(
            f"{name} could not be opened as a video ({error}); pass an existing, complete video file "
            "(e.g. mp4, webm, mkv)."
        ) from error
    with container:
        if container.format.name in _IMAGE_FORMATS or container.format.name.endswith("_pipe"):
            raise VideoDecodingError(
                f"{name} is an image ({container.format.name}), not a video; pass it as an image (`images=` or a "
                '`{"type": "image"}` chat entry) instead.'
            )
        if not container.streams.video:
            raise VideoDecodingError(f"{name} contains no video frames (no video stream); pass a video file.")
        stream = container.streams.video[0]
        try:
            index = _FrameIndex.from_demux(container, stream, name)
        except av.FFmpegError as error:
            raise _corrupt(name, error) from error
        if len(index.pts) == 0:
            raise VideoDecodingError(f"{name} contains no video frames; pass a video with at least one frame.")
        metadata = _metadata(stream, index)
        _check_complete(container, stream, index, metadata, name)
        indices = np.arange(len(index.pts)) if sample_indices_fn is None else sample_indices_fn(metadata=metadata)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(index.pts)):
            raise VideoDecodingError(
                f"Frame indices {indices.tolist()} are out of range for {name}, which has {len(index.pts)} frames."
            )
        wanted_pts = index.pts[indices]
        try:
            decoded = _decode_frames(container, stream, index, wanted_pts, name)
        except av.FFmpegError as error:
            raise _corrupt(name, error) from error
    metadata.frames_indices = indices.tolist()
    metadata.frames_timestamps = [float(pts * stream.time_base) for pts in wanted_pts]
    frames = np.stack([decoded[pts] for pts in wanted_pts.tolist()])
    metadata.height, metadata.width = frames.shape[1:3]  # as displayed, after the rotation
    return frames, metadata


def _corrupt(name: str, error: Exception) -> VideoDecodingError:
    return VideoDecodingError(f"{name} is corrupt or truncated ({error}); re-encode or re-download it.")


def _metadata(stream, index: _FrameIndex) -> StormVideoMetadata:
    """Frame count and average frame rate measured from the frame timestamps (no container guesses)."""
    num_frames = len(index.pts)
    if num_frames > 1:
        fps = (num_frames - 1) / float((index.pts[-1] - index.pts[0]) * stream.time_base)
    else:  # a single frame has no frame interval: take the rate the container declares, if any
        fps = float(stream.average_rate) if stream.average_rate else None
    return StormVideoMetadata(
        total_num_frames=num_frames,
        fps=fps,
        duration=num_frames / fps if fps else None,
        video_backend="pyav",
    )


def _check_complete(container, stream, index: _FrameIndex, metadata: StormVideoMetadata, name: str):
    """Raise when the frames end well before the duration the container declares (a cut-off download or recording)."""
    if not container.duration:
        return
    declared_end = ((container.start_time or 0) + container.duration) / 1_000_000  # container times are microseconds
    frames_end = float(index.pts[-1] * stream.time_base) + (1 / metadata.fps if metadata.fps else 0)
    if frames_end + max(1.0, 0.1 * container.duration / 1_000_000) < declared_end:
        raise VideoDecodingError(
            f"{name} is truncated: its header declares {declared_end:.2f}s but its frames end at {frames_end:.2f}s. "
            "Re-download or re-encode the complete file."
        )


def _decode_frames(container, stream, index: _FrameIndex, wanted_pts: np.ndarray, name: str) -> dict[int, np.ndarray]:
    """Decode the frames with pts in `wanted_pts`, returned as {pts: (height, width, 3) uint8 RGB}."""
    codec = stream.codec_context
    # Open the decoder before `_decode_from_here` sets skip_frame: some decoders (libdav1d) read skip_frame only when
    # opened, and opened with "NONREF" they would never return a wanted non-reference frame.
    codec.open()
    wanted = set(wanted_pts.tolist())
    frames: dict[int, np.ndarray] = {}
    decoded = None  # iterator over the decoded frames from the last seek on
    last_pts = None  # pts of the last frame `decoded` returned
    for target in sorted(wanted):
        keyframe = index.keyframe_before(target)
        if decoded is None or last_pts is None or keyframe > last_pts:
            container.seek(keyframe, stream=stream, backward=True, any_frame=False)
            codec.flush_buffers()
            decoded = _decode_from_here(container, stream, wanted)
        for frame in decoded:
            last_pts = frame.pts
            if frame.pts in wanted:
                frames[frame.pts] = _to_rgb(frame)
            if frame.pts >= target:
                break
        if target not in frames:
            raise VideoDecodingError(
                f"The frame at {float(target * stream.time_base):.3f}s of {name} could not be decoded; the file is "
                "corrupt or truncated. Re-encode or re-download it."
            )
    return frames


def _decode_from_here(container, stream, wanted: set[int]):
    """Decoded frames from the current demuxer position, skipping non-reference frames nobody asked for.

    Packets come in decode order, so the skip is decided per packet: a wanted frame's packet is decoded in full, every
    other packet with skip_frame "NONREF" (the decoder still decodes it when it is a reference for later frames).
    """
    codec = stream.codec_context
    for packet in container.demux(stream):
        codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        yield from codec.decode(packet)


def _to_rgb(frame) -> np.ndarray:
    """(height, width, 3) uint8 RGB array of a decoded frame, turned upright as its display matrix says."""
    rgb = frame.to_ndarray(format="rgb24")
    rotation = frame.rotation
    if rotation % 90:
        raise VideoDecodingError(f"Display rotations must be multiples of 90 degrees, got {rotation}.")
    return np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4)) if rotation else rgb
