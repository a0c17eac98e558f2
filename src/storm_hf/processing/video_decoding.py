"""The one video decoder of STORM: read the frames a sampler asks for from a video (path, URL, bytes or file object)
with PyAV, or yield every frame as it arrives from a live source; both under a `VideoIntakePolicy` (`video_intake`).

Opening: the source is checked and resolved by the intake policy before anything is opened (http(s) videos are
fetched into a temporary file by a bounded client); FFmpeg then opens it with its own `protocol_whitelist` and
`format_whitelist`, which also bind the nested opens of playlists and concat scripts, so a demuxer that would open
another resource is refused before it reads one. The stream is the one FFmpeg would pick (never a cover picture); its
frame size is checked against the pixel budget from the header, and the decoder enforces the same budget on every
frame. Frames are returned as displayed (the display matrix's rotation and mirroring applied) and, when the caller
gives its resize (`resize_frames`, e.g. `StormVideoProcessor.frame_resizer()`), resized as they are decoded, a few
at a time (`_RESIZE_BATCH_BYTES` of decoded frames), so that memory follows the output size and the pixels are those
the caller's own resize gives.

Sampling (`read_video`): one demux pass (no decoding) lists every frame's presentation timestamp (pts) and the
keyframes, which gives the exact frame count (also for webm/mkv, which store none) and the real time of every frame
(also for variable frame rate). Frames are then decoded in presentation order: to reach a sampled frame the reader
seeks to the keyframe before it when that keyframe lies beyond what was already decoded, and otherwise reads on;
frames that no later frame references and that were not asked for are skipped by the decoder. Every seek is verified:
the first frame decoded from the sought keyframe on must be that keyframe at its pts, and every frame must be intact
(not concealed) with a pts the index knows. When a seek cannot be verified (MPEG-PS timestamps guessed after a seek, a
damaged index), it is retried from earlier keyframes, then the input is opened again and decoded in order, exactly as
a sequential decode. Files whose frames carry no usable timestamps are decoded in order and their frames are addressed
by position.

Streaming (`iter_video_frames`): the same opening, stream choice, budgets and frame conversion, decoding packets as
they are demuxed.
"""

import contextlib
import io
import itertools
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from transformers.video_utils import VideoMetadata

from .video_intake import (
    Deadline,
    FormatRefusedError,
    FramePixelBudgetError,
    ImageNotVideoError,
    MissingTimestampsError,
    VideoDecodingError,
    VideoIntakePolicy,
    environment_policy,
    resolve_source,
)


VideoSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Demuxers of raw elementary streams: no container, so FFmpeg invents frame times from an assumed 25 fps.
_ELEMENTARY_STREAM_DEMUXERS = {"h264", "hevc", "vvc", "m4v", "mpegvideo", "cavsvideo", "avs2", "vc1", "obu", "mjpeg"}
# Demuxers that seek by presentation timestamps (their index holds them); the others (MPEG-TS and -PS, FLV, AVI, ...)
# seek by decoding timestamps or byte positions, so a keyframe is sought at its dts, which is at or before its pts.
_SEEK_BY_PTS = {"mov", "matroska"}
_SEEK_RETRIES = 2  # earlier keyframes to seek to when a seek does not land where it should
# Codecs of still images: a one-frame stream of these is an image, not a video.
_IMAGE_CODECS = {"png", "mjpeg", "jpeg2000", "jpegls", "bmp", "tiff", "webp", "gif", "ppm", "pgm", "pam", "qoi"}
# Leading bytes of inputs FFmpeg could open but no allowed demuxer reads, for the refusal's message.
_NON_VIDEO_SIGNATURES = (
    (re.compile(rb"^\s*#EXTM3U"), "an HLS playlist, which opens the files it lists (demuxer 'hls')"),
    (re.compile(rb"^\s*ffconcat version"), "an ffconcat script, which opens the files it lists (demuxer 'concat')"),
    (re.compile(rb"^\s*(<\?xml[^>]*>\s*)?<MPD"), "a DASH manifest, which opens the files it lists (demuxer 'dash')"),
)
# What FFmpeg logs when a decoder refuses a frame over `max_pixels` (the stream header may not have said so).
_OVERSIZED_FRAME = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")
FrameResizer = Callable[[np.ndarray], np.ndarray]
"""`resize_frames(frames)`: (num_frames, height, width, 3) uint8 RGB frames, as displayed, at the size the caller
needs."""
# Decoded frames waiting to be resized together: one resize call per batch (a call per frame costs more, in the resize
# library's thread start-ups), while full-size frames never take more than this much memory.
_RESIZE_BATCH_BYTES = 64 * 2**20


@dataclass
class StormVideoMetadata(VideoMetadata):
    """`VideoMetadata` whose `timestamps` are the presentation times of the sampled frames, in seconds from the start of
    the container (its start time subtracted, as the ffmpeg command line does)."""

    frames_timestamps: list[float] | None = None

    @property
    def timestamps(self) -> list[float]:
        if self.frames_timestamps is not None:
            return self.frames_timestamps
        return super().timestamps


def is_video_source(video) -> bool:
    """Whether `video` is an encoded video (path, URL, bytes or binary file object) rather than decoded frames."""
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read")


def describe_video_source(source: VideoSource) -> str:
    """Short name of a video source for error messages (a long `data:` URL is cut after its media type)."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text[:5].lower() == "data:" and len(text) > 80:
            return f"the data: URL '{text[:40]}...' ({len(text)} characters)"
        return f"'{text}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"the {len(source)} bytes passed as a video"
    return f"the file object {getattr(source, 'name', type(source).__name__)!r}"


def check_sampling_arguments(
    num_frames: int | None = None,
    fps: float | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
) -> None:
    """Raise a `ValueError` naming the argument when a frame-sampling argument cannot mean anything.

    Frame counts must be positive integers, `fps` a positive finite number, `min_frames <= max_frames`, and `num_frames`
    and `fps` are mutually exclusive. `None` means "not given" for each.
    """
    for argument, value in (
        ("num_frames", num_frames),
        ("min_frames", min_frames),
        ("max_frames", max_frames),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"`{argument}` must be a positive whole number of frames, got {value!r}.")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"`fps` must be a positive, finite number of frames per second, got {fps!r}.")
        if num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive; pass one of them.")
    if min_frames is not None and max_frames is not None and min_frames > max_frames:
        raise ValueError(f"`min_frames={min_frames}` is larger than `max_frames={max_frames}`; swap or drop one.")


DecodeProgressCallback = Callable[[int, int], None]
"""`progress_callback(done_frames, total_frames)`: called by `read_video` each time one more of the distinct sampled
frames is decoded (`done_frames` goes 1, 2, ..., `total_frames`)."""


def read_video(
    source: VideoSource,
    sample_indices_fn: Callable[..., np.ndarray] | None = None,
    *,
    policy: VideoIntakePolicy | None = None,
    resize_frames: FrameResizer | None = None,
    progress_callback: DecodeProgressCallback | None = None,
) -> tuple[np.ndarray, StormVideoMetadata]:
    """Decode the frames of `source` chosen by `sample_indices_fn(metadata=...)` (all frames when `None`).

    `source` is a path, an http(s), `file://` or `data:` URL, bytes, or a binary file object positioned at the start of
    the video; `policy` (default: `video_intake.environment_policy()`, which is `VideoIntakePolicy()` unless
    `$STORM_VIDEO_INTAKE_POLICY` changes it) decides whether it may be read and bounds the read. `resize_frames` is
    applied to the frames as they are decoded (memory then follows its output size).
    `progress_callback(done_frames, total_frames)` is called after each distinct sampled frame is decoded, with
    `total_frames` the number of distinct sampled frames; `done_frames` rises by one per call and ends at
    `total_frames` (frames decoded again by the in-order fallback are not reported twice).

    Returns:
        frames: uint8 array (num_sampled_frames, height, width, 3), RGB, as displayed (the display matrix's rotation and
            mirroring applied), then resized by `resize_frames`.
        metadata: `StormVideoMetadata` of the whole video, with `frames_indices` and `frames_timestamps` of the
            sampled frames.
    """
    import av

    with _VideoInput(source, policy or environment_policy()) as video_input, video_input.open() as container:
        name = video_input.name
        stream = _video_stream(container, video_input)
        try:
            index = _FrameIndex.from_demux(container, stream, video_input)
            if not index.by_pts:
                index = _FrameIndex.from_decoding(video_input)
        except av.FFmpegError as error:
            raise video_input.unreadable(error) from error
        if index.num_frames == 0:
            raise VideoDecodingError(f"{name} contains no video frames; pass a video with at least one frame.")
        if index.num_frames == 1 and stream.codec_context.name in _IMAGE_CODECS:
            raise _image_error(name, f"a single {stream.codec_context.name} picture")
        metadata = _metadata(stream, index)
        _check_complete(container, stream, index, metadata, name)
        indices = _sample(sample_indices_fn, metadata, video_input)
        with _FrameReader(video_input, container, stream, index, resize_frames, progress_callback) as reader:
            frames = reader.read(indices)
    metadata.frames_indices = indices.tolist()
    metadata.frames_timestamps = index.times(indices)
    metadata.height, metadata.width = reader.displayed_size  # as displayed, after the rotation (before resizing)
    return frames, metadata


def iter_video_frames(
    source,
    fps: float | None = None,
    *,
    policy: VideoIntakePolicy | None = None,
    resize_frames: FrameResizer | None = None,
    format: str | None = None,
    options: dict[str, str] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode a video progressively and yield `(seconds, frame)` as packets arrive: the decoder of `read_video`
    (same intake policy, stream choice, budgets, orientation and resizing), without its index pass.

    source: a path, URL or bytes as for `read_video`, a live URL of a protocol the policy enables (e.g.
    `tcp://127.0.0.1:9000?listen=1` with `VideoIntakePolicy(live_protocols={"tcp"}, deadline_s=None)`), or a binary
    file object, which need not be seekable (e.g. the read end of a pipe another process writes an mpegts stream
    into). Only the packets demuxed so far are decoded, so a live source yields each frame as soon as it is decoded.
    `fps`: keep the first frame, then the first frame at or after every `1 / fps` seconds of video time (None: every
    frame). `format` / `options`: FFmpeg's demuxer name (needed for pipes, e.g. `"mpegts"`; it must be one the policy
    allows) and demuxer options (e.g. `{"probesize": "32"}` to start sooner). seconds: from the container's start, as
    `read_video`'s timestamps. frame: `(height, width, 3)` uint8 RGB, as `read_video` returns it (with `resize_frames`
    applied).
    """
    import av

    if fps is not None:
        check_sampling_arguments(fps=fps)
    policy = policy or environment_policy()
    with _VideoInput(source, policy, seekable=False, format=format, options=options) as video_input:
        with video_input.open() as container:
            stream = _video_stream(container, video_input)
            start = (container.start_time or 0) / 1_000_000
            next_time, decoded, yielded = None, 0, 0
            try:
                for packet in _demux(container, stream, video_input):
                    for frame in packet.decode():
                        if frame.time is None:
                            raise MissingTimestampsError(
                                f"Frame {decoded} of {video_input.name} carries no timestamp; send the stream in a "
                                "container that has them (e.g. mpegts)."
                            )
                        seconds = float(frame.time) - start
                        decoded += 1
                        if fps is not None and next_time is not None and seconds < next_time - 1e-9:
                            continue
                        next_time = seconds + 1 / fps if fps is not None else None
                        yielded += 1
                        policy.check_frame_count(yielded, video_input.name)
                        rgb = _to_rgb(frame)
                        yield seconds, rgb if resize_frames is None else resize_frames(rgb[None])[0]
            except av.FFmpegError as error:
                raise video_input.unreadable(error, decoded) from None
            except _UnsupportedDisplayMatrix as error:
                raise _display_matrix_error(video_input.name, error) from None


class _VideoInput:
    """A video source checked by the intake policy, that can be opened more than once (a fallback decodes it again from
    its start); a context manager that deletes what it fetched."""

    def __init__(
        self,
        source: VideoSource,
        policy: VideoIntakePolicy,
        *,
        seekable: bool = True,
        format: str | None = None,
        options: dict[str, str] | None = None,
    ):
        self.source, self.policy, self.format, self.extra_options = source, policy, format, dict(options or {})
        self.name = describe_video_source(source)
        self.start = self._file_object_start(source, seekable) if hasattr(source, "read") else None
        if format is not None and not set(format.split(",")) & policy.allowed_demuxers:
            raise FormatRefusedError(
                f"The demuxer {format!r} asked for {self.name} is not one the intake policy allows "
                f"({', '.join(sorted(policy.allowed_demuxers))})."
            )
        self.deadline = Deadline(policy.deadline_s, self.name)
        self.oversized_frame = None  # a frame size over the budget that the stream probing met (`open`)
        self.resolved = resolve_source(source, self.name, policy, self.deadline)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.resolved.close()

    def _file_object_start(self, file, seekable: bool) -> int | None:
        """Position of the video in a file object, after checking that it is open, binary and (when the reader reads
        it twice) seekable."""
        if getattr(file, "closed", False):
            raise VideoDecodingError(f"{self.name} is closed; pass an open file (`open(path, 'rb')`).")
        if isinstance(file, io.TextIOBase) or "b" not in getattr(file, "mode", "b"):
            raise VideoDecodingError(f"{self.name} is open in text mode; open the video with `open(path, 'rb')`.")
        is_seekable = hasattr(file, "seek") and getattr(file, "seekable", lambda: True)()
        if not seekable:
            return file.tell() if is_seekable else None
        if not is_seekable:
            raise VideoDecodingError(
                f"{self.name} is not seekable (a pipe or a stream); the reader reads a video twice. Pass its bytes, "
                "a path or a URL instead, or read it as it arrives with `iter_video_frames`."
            )
        return file.tell()

    def unreadable(self, error: Exception, decoded: int | None = None) -> VideoDecodingError:
        """The error for a video that opened but whose packets could not be read or decoded (or whose decoder refused
        a frame over the pixel budget, larger than the stream header said)."""
        if self.resolved.is_live and _is_read_timeout(error):
            return self._silent_error()
        oversized = _OVERSIZED_FRAME.search(str(error))
        if oversized is not None:
            return FramePixelBudgetError(
                f"{self.name} has a {oversized[1]}x{oversized[2]} frame (larger than its header says), over the intake "
                f"pixel budget of {self.policy.max_frame_pixels} pixels per frame; raise "
                "`VideoIntakePolicy(max_frame_pixels=...)` to decode it."
            )
        where = "" if decoded is None else f" after {decoded} frames"
        return VideoDecodingError(f"{self.name} is corrupt or truncated{where} ({error}); re-encode or re-download it.")

    def open(self):
        """An input container of the video, opened by FFmpeg under the policy's protocol and demuxer allow-lists."""
        import av

        target = self.resolved.target
        if isinstance(target, io.BytesIO) or self.start is not None:  # read again from the start of the video
            target.seek(self.start or 0)
        options = {**self.extra_options, **self.policy.ffmpeg_options(self.resolved.protocols)}
        timeout = None
        if self.resolved.is_live:  # rw_timeout is in microseconds
            options["rw_timeout"] = str(int(self.policy.read_timeout_s * 1e6))
            timeout = self.policy.read_timeout_s
        try:
            with _capture_ffmpeg_errors() as logs:  # the stream probing's decoders may refuse a frame size
                container = av.open(
                    target, mode="r", format=self.format, options=options, timeout=timeout, metadata_errors="replace"
                )
        except (av.FFmpegError, OSError) as error:
            raise self._open_error(error) from error
        self.oversized_frame = next(filter(None, (_OVERSIZED_FRAME.search(message) for *_, message in logs)), None)
        demuxers = set(container.format.name.split(","))
        if demuxers & _ELEMENTARY_STREAM_DEMUXERS:
            container.close()
            raise MissingTimestampsError(
                f"{self.name} is a raw {container.format.name} elementary stream: it has no container, so no frame "
                "times (FFmpeg would invent them from an assumed 25 fps). Put it in a container at its real frame "
                "rate, e.g. `ffmpeg -r 30 -i input.h264 -c copy output.mp4`, and pass that."
            )
        return container

    def _open_error(self, error: Exception) -> VideoDecodingError:
        """Why FFmpeg refused to open the input: a live source that sent nothing in time, a format the policy does not
        accept (a playlist, an image, text), or not a readable video at all."""
        if self.resolved.is_live and _is_read_timeout(error):
            return self._silent_error()
        head = self._head()
        for signature, what in _NON_VIDEO_SIGNATURES:
            if signature.match(head):
                return FormatRefusedError(
                    f"{self.name} could not be opened as a video: it is {what}, which the intake policy does not "
                    "accept (`VideoIntakePolicy(allowed_demuxers=...)`). Pass the video file itself."
                )
        image_format = _image_format(head)
        if image_format is not None:
            return _image_error(self.name, f"{image_format} format")
        if head and _is_text(head):
            return FormatRefusedError(
                f"{self.name} could not be opened as a video: it is a text file. Pass a video file (e.g. mp4, webm, "
                "mkv, mov, avi, ts)."
            )
        return VideoDecodingError(
            f"{self.name} could not be opened as a video ({error}); pass an existing, complete video (e.g. mp4, webm, "
            "mkv) in a container the intake policy accepts."
        )

    def _silent_error(self) -> VideoDecodingError:
        return VideoDecodingError(
            f"{self.name} sent no data for {self.policy.read_timeout_s:g}s; check that the stream is live, or raise "
            "`VideoIntakePolicy(read_timeout_s=...)`."
        )

    def _head(self, size: int = 4096) -> bytes:
        """The first bytes of the input (empty when they cannot be read again, e.g. from a pipe)."""
        target = self.resolved.target
        try:
            if isinstance(target, str):
                if not target.startswith("file:"):
                    return b""
                with open(target[len("file:") :], "rb") as file:
                    return file.read(size)
            if self.start is None and not isinstance(target, io.BytesIO):
                return b""
            target.seek(self.start or 0)
            return target.read(size)
        except (OSError, ValueError):
            return b""


@contextlib.contextmanager
def _capture_ffmpeg_errors():
    """FFmpeg's error messages logged by this thread inside the block (`(level, name, message)`), with FFmpeg's
    logging switched on at the error level for the block when it is off."""
    import av.logging

    level = av.logging.get_level()
    if level is None:
        av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        if level is None:
            av.logging.set_level(None)


def _is_read_timeout(error: Exception) -> bool:
    """Whether FFmpeg gave up on a live source because a read took longer than its timeout (PyAV's interrupt, or
    FFmpeg's own `rw_timeout`)."""
    import av

    return isinstance(error, (av.error.ExitError, av.error.TimeoutError))


def _image_format(head: bytes) -> str | None:
    """The image format PIL recognises from the first bytes of a file, or None."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(head)) as image:
            return image.format
    except Exception:  # noqa: BLE001 - PIL raises many kinds for "not an image I know" (or a header cut short)
        return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(character.isprintable() or character in "\t\r\n\f" for character in text)


def _video_stream(container, video_input: _VideoInput):
    """The stream `_best_video_stream` picks, checked against the pixel budget from its header; its decoder enforces
    the same budget on every frame."""
    stream = _best_video_stream(container, video_input.name)
    width, height = stream.codec_context.width, stream.codec_context.height
    if video_input.oversized_frame is not None:  # the probing decoder met a frame larger than the header said
        width, height = map(int, video_input.oversized_frame.groups())
    max_pixels = video_input.policy.max_frame_pixels
    if width * height > max_pixels:
        raise FramePixelBudgetError(
            f"{video_input.name} has {width}x{height} frames ({width * height} pixels), over the intake pixel budget "
            f"of {max_pixels} pixels per frame; raise `VideoIntakePolicy(max_frame_pixels=...)` to decode it."
        )
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(max_pixels)}
    return stream


def _best_video_stream(container, name: str):
    """The video stream FFmpeg would pick (av_find_best_stream), never an attached picture (cover art)."""
    from av.stream import Disposition

    videos = [stream for stream in container.streams.video if not stream.disposition & Disposition.attached_pic]
    if not videos:
        if container.streams.video:
            raise VideoDecodingError(
                f"{name} holds only a cover picture (an attached picture), no video; pass it as an image, or pass a "
                "video file."
            )
        kinds = sorted({stream.type for stream in container.streams})
        found = f"only {' and '.join(kinds)}" if kinds else "no streams at all"
        raise VideoDecodingError(f"{name} contains no video frames ({found}, no video stream); pass a video file.")
    best = container.streams.best("video")
    stream = next((stream for stream in videos if best is not None and stream.index == best.index), videos[0])
    if stream.codec_context is None:
        raise VideoDecodingError(
            f"The video stream of {name} has a codec this FFmpeg build cannot decode; re-encode it (e.g. to H.264)."
        )
    return stream


def _demux(container, stream, video_input: _VideoInput) -> Iterator:
    """`container.demux(stream)` within the intake deadline (checked at every packet), with the IndexError PyAV raises
    when a stream appears in the middle of a file (an MPEG-TS can announce new streams anywhere) turned into a named
    error."""
    packets = container.demux(stream)
    while True:
        video_input.deadline.check()
        try:
            packet = next(packets)
        except StopIteration:
            return
        except IndexError as error:
            raise VideoDecodingError(
                f"{video_input.name} announces new streams in the middle of the file, which PyAV cannot follow; "
                "re-mux it (e.g. to mp4) first."
            ) from error
        yield packet


@dataclass
class _FrameIndex:
    """Every frame of a video stream, in presentation order.

    pts: (num_frames,) presentation timestamps (stream time base), sorted; `by_pts` says whether they identify the
        frames (present and distinct). When they do not, frames are addressed by their position in decoding output.
    keyframe_pts: (num_keyframes,) sorted pts of the keyframes, where decoding can start.
    keyframe_seek: (num_keyframes,) the timestamp to seek to for each keyframe (its pts or dts, as the container seeks).
    time_base: seconds per pts unit; None when the frames carry no times.
    start_time: the container's start, in seconds (timestamps are reported from there).
    """

    pts: np.ndarray
    keyframe_pts: np.ndarray
    keyframe_seek: np.ndarray
    time_base: float | None
    start_time: float
    by_pts: bool = True

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @classmethod
    def from_demux(cls, container, stream, video_input: "_VideoInput") -> "_FrameIndex":
        """Index from one pass over the packets (no decoding)."""
        seek_by_pts = bool(set(container.format.name.split(",")) & _SEEK_BY_PTS)
        pts, keyframes = [], []
        for packet in _demux(container, stream, video_input):
            if packet.size == 0 or packet.is_discard:
                continue
            pts.append(packet.pts)
            video_input.policy.check_indexed_frames(len(pts), video_input.name)
            if packet.is_keyframe and packet.pts is not None:
                dts = packet.dts if packet.dts is not None else packet.pts
                keyframes.append((packet.pts, packet.pts if seek_by_pts else min(packet.pts, dts)))
        by_pts = None not in pts and len(set(pts)) == len(pts)
        keyframes = np.array(sorted(keyframes) or np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
        return cls(
            pts=np.sort(np.asarray(pts if by_pts else [], dtype=np.int64)),
            keyframe_pts=keyframes[:, 0],
            keyframe_seek=keyframes[:, 1],
            time_base=float(stream.time_base),
            start_time=(container.start_time or 0) / 1_000_000,  # container times are microseconds
            by_pts=by_pts,
        )

    @classmethod
    def from_decoding(cls, video_input: "_VideoInput") -> "_FrameIndex":
        """Index of a stream whose packets carry no usable pts: one decoding pass, from the start of a freshly opened
        input, counts the frames. Frames are then addressed by position; their times are known only when the decoder
        gave every frame a pts, in increasing order (else `time_base` is None)."""
        with video_input.open() as container:
            stream = _video_stream(container, video_input)
            pts = []
            for packet in _demux(container, stream, video_input):
                pts.extend(frame.pts for frame in packet.decode())
                video_input.policy.check_indexed_frames(len(pts), video_input.name)
            time_base, start_time = float(stream.time_base), (container.start_time or 0) / 1_000_000
        if None in pts or sorted(set(pts)) != pts:
            pts, time_base = list(range(len(pts))), None
        return cls(
            pts=np.asarray(pts, dtype=np.int64),
            keyframe_pts=np.zeros(0, dtype=np.int64),
            keyframe_seek=np.zeros(0, dtype=np.int64),
            time_base=time_base,
            start_time=start_time,
            by_pts=False,
        )

    def keyframe_before(self, pts: int) -> int:
        """Position in `keyframe_pts` of the last keyframe at or before `pts`; -1 when there is none."""
        return int(np.searchsorted(self.keyframe_pts, pts, side="right")) - 1

    def times(self, indices: np.ndarray) -> list[float] | None:
        """Seconds from the container start of the frames at `indices` (None when the frames carry no times)."""
        if self.time_base is None:
            return None
        return [float(pts) * self.time_base - self.start_time for pts in self.pts[indices]]


def _sample(sample_indices_fn, metadata: StormVideoMetadata, video_input: _VideoInput) -> np.ndarray:
    """The sampler's frame indices, checked: a non-empty list of whole numbers within the video, no more distinct
    frames than the intake policy's `max_decoded_frames`."""
    name = video_input.name
    if sample_indices_fn is None:
        video_input.policy.check_frame_count(metadata.total_num_frames, name)
        return np.arange(metadata.total_num_frames)
    try:
        indices = np.asarray(sample_indices_fn(metadata=metadata))
    except ValueError as error:  # e.g. more frames asked for than the video has
        hint = ""
        if metadata.total_num_frames == 1:
            hint = " It has a single frame: if it is an image, pass it as an image (`images=` or an image chat entry)."
        raise VideoDecodingError(f"Cannot sample frames of {name}: {error}{hint}") from error
    total = metadata.total_num_frames
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise VideoDecodingError(
            f"The frame sampler chose {indices.tolist()} for {name}; it must choose a non-empty list of frame indices "
            f"(whole numbers in [0, {total - 1}])."
        )
    if indices.min() < 0 or indices.max() >= total:
        raise VideoDecodingError(
            f"Frame indices {indices.tolist()} are out of range for {name}, which has {total} frames "
            f"(indices 0 to {total - 1})."
        )
    video_input.policy.check_frame_count(len(np.unique(indices)), name)
    return indices.astype(np.int64)


def _image_error(name: str, what: str) -> ImageNotVideoError:
    return ImageNotVideoError(
        f"{name} is an image ({what}), not a video; pass it as an image (`images=` or a "
        '`{"type": "image"}` chat entry) instead.'
    )


def _metadata(stream, index: _FrameIndex) -> StormVideoMetadata:
    """Frame count and average frame rate measured from the frame timestamps (no container guesses)."""
    num_frames = index.num_frames
    if num_frames > 1 and index.time_base is not None:
        fps = (num_frames - 1) / float((index.pts[-1] - index.pts[0]) * index.time_base)
    else:  # no frame interval to measure: take the rate the container declares, if any
        fps = float(stream.average_rate) if stream.average_rate else None
    return StormVideoMetadata(
        total_num_frames=num_frames,
        fps=fps,
        duration=num_frames / fps if fps else None,
        video_backend="pyav",
    )


def _stream_end(container, stream) -> float | None:
    """End of `stream` in seconds as the container declares it: the stream's own duration, Matroska's per-track
    DURATION tag, or the container's duration when the stream is its only one; None when unknown."""
    start = float((stream.start_time or 0) * stream.time_base)
    if stream.duration:
        return start + float(stream.duration * stream.time_base)
    tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", stream.metadata.get("DURATION", ""))
    if tag:  # FFmpeg writes the track's end time here (from 0, not from the track's start): read it as the end
        return 3600 * int(tag[1]) + 60 * int(tag[2]) + float(tag[3])
    if container.duration and len(container.streams) == 1:
        return ((container.start_time or 0) + container.duration) / 1_000_000
    return None


def _check_complete(container, stream, index: _FrameIndex, metadata: StormVideoMetadata, name: str):
    """Raise when the frames end well before the duration the container declares (a cut-off download or recording)."""
    declared_end = _stream_end(container, stream)
    if declared_end is None or index.time_base is None:
        return
    frames_end = float(index.pts[-1]) * index.time_base + (1 / metadata.fps if metadata.fps else 0)
    if frames_end + max(1.0, 0.1 * (declared_end - float(index.pts[0]) * index.time_base)) < declared_end:
        raise VideoDecodingError(
            f"{name} is truncated: its header declares {declared_end:.2f}s but its frames end at {frames_end:.2f}s. "
            "Re-download or re-encode the complete file."
        )


class _SeekMissed(Exception):
    """A seek did not land on the keyframe it asked for, or a frame was not where the index put it."""


class _FrameReader:
    """Decodes the frames at given indices: by seeking to keyframes where the index has them and each seek lands where
    it should; otherwise (the verified fallback) by decoding the input again from its start, in order."""

    def __init__(
        self,
        video_input: _VideoInput,
        container,
        stream,
        index: _FrameIndex,
        resize_frames: FrameResizer | None = None,
        progress_callback: DecodeProgressCallback | None = None,
    ):
        self.input, self.container, self.stream, self.index = video_input, container, stream, index
        self.resize_frames = resize_frames
        self.unresized: list[int] = []  # keys of kept frames still at their decoded size
        self.displayed_size = None  # (height, width) of the frames as displayed, before `resize_frames`
        self.known_pts = set(index.pts.tolist()) if index.by_pts else set()
        self.reopened = None  # the container of the in-order fallback
        self.progress_callback = progress_callback
        self.num_wanted = self.num_reported = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.reopened is not None:
            self.reopened.close()

    def read(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), height, width, 3) uint8 RGB frames."""
        import av

        keys = self.index.pts[indices] if self.index.by_pts else indices  # how decoded frames are recognised
        wanted = sorted(set(keys.tolist()))
        self.num_wanted = len(wanted)
        try:
            try:
                frames = self._by_seeking(wanted)
            except (_SeekMissed, av.FFmpegError):
                frames = self._in_order(wanted)
        except av.FFmpegError as error:
            raise self.input.unreadable(error) from error
        except _UnsupportedDisplayMatrix as error:
            raise _display_matrix_error(self.input.name, error) from error
        self._resize(frames)
        missing = [position for position, key in enumerate(keys.tolist()) if key not in frames]
        if missing:
            raise VideoDecodingError(
                f"Frame {indices[missing[0]]} of {self.input.name} could not be decoded; the file is corrupt or "
                "truncated. Re-encode or re-download it."
            )
        sizes = sorted({f"{frame.shape[0]}x{frame.shape[1]}" for frame in frames.values()})
        if len(sizes) > 1:
            raise VideoDecodingError(
                f"{self.input.name} changes its frame size between the sampled frames ({' and '.join(sizes)} pixels, "
                "height x width); re-encode it to one size."
            )
        return np.stack([frames[key] for key in keys.tolist()])

    def _keep(self, frames: dict[int, np.ndarray], key: int, frame) -> None:
        """Store `frame` as RGB under `key` and report progress when more frames are done than were reported (a
        fallback that decodes again from the start reports only the frames beyond those)."""
        frames[key] = _to_rgb(frame)
        self.displayed_size = frames[key].shape[:2]
        if self.resize_frames is not None:
            if self.unresized and frames[self.unresized[0]].shape != frames[key].shape:
                self._resize(frames)  # a batch holds frames of one size
            self.unresized.append(key)
            if len(self.unresized) * frames[key].nbytes >= _RESIZE_BATCH_BYTES:
                self._resize(frames)
        if self.progress_callback is not None and len(frames) > self.num_reported:
            self.num_reported = len(frames)
            self.progress_callback(self.num_reported, self.num_wanted)

    def _resize(self, frames: dict[int, np.ndarray]) -> None:
        """Resize the kept frames still at their decoded size, in one call."""
        if self.resize_frames is None or not self.unresized:
            return
        resized = self.resize_frames(np.stack([frames[key] for key in self.unresized]))
        frames.update(zip(self.unresized, resized))
        self.unresized = []

    def _by_seeking(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Frames with pts in `wanted`, sought from their keyframes; raises `_SeekMissed` when a seek is off."""
        if not self.index.by_pts or not len(self.index.keyframe_pts):
            raise _SeekMissed
        # Open the decoder before `_decode_from_here` sets skip_frame: some decoders (libdav1d) read skip_frame only
        # when opened, and opened with "NONREF" they would never return a wanted non-reference frame.
        self.stream.codec_context.open()
        frames: dict[int, np.ndarray] = {}
        decoded, last_pts, wanted_set = None, None, set(wanted)
        for target in wanted:
            keyframe = self.index.keyframe_before(target)
            if keyframe < 0:
                raise _SeekMissed
            if decoded is None or last_pts is None or self.index.keyframe_pts[keyframe] > last_pts:
                decoded = self._seek(keyframe, wanted_set)
            for frame in decoded:
                last_pts = frame.pts
                if frame.pts in wanted_set:
                    self._keep(frames, frame.pts, frame)
                if frame.pts >= target:
                    break
            if target not in frames:
                raise _SeekMissed
        return frames

    def _seek(self, keyframe: int, wanted: set[int]) -> Iterator:
        """Decoded frames from the keyframe at position `keyframe` of the index on, after a verified seek.

        The first frame must be that keyframe, at its pts. When it is not, the seek is retried from up to
        `_SEEK_RETRIES` earlier keyframes (after a seek, the MPEG-PS demuxer guesses wrong timestamps for the first
        packets); then `_SeekMissed`.
        """
        from av.video.frame import PictureType

        start_pts = int(self.index.keyframe_pts[keyframe])
        for earlier in range(min(_SEEK_RETRIES, keyframe) + 1):
            seek_to = int(self.index.keyframe_seek[keyframe - earlier])
            self.container.seek(seek_to, stream=self.stream, backward=True, any_frame=False)
            self.stream.codec_context.flush_buffers()
            decoded = _decode_from_here(self.container, self.stream, wanted, start_pts, self.known_pts, self.input)
            try:
                first = next(decoded, None)
            except _SeekMissed:
                continue
            if first is not None and first.pts == start_pts and (first.key_frame or first.pict_type == PictureType.I):
                return itertools.chain([first], decoded)
        raise _SeekMissed

    def _in_order(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode the input again from its start, every frame in order, as a plain sequential decode does (nothing is
        skipped: in a damaged stream even a non-reference frame can change the decoder's state). Frames are recognised
        by pts, or by position when pts do not identify them."""
        self.reopened = self.input.open()
        self.unresized = []  # those of the frames the seeking pass kept
        stream = _video_stream(self.reopened, self.input)
        frames: dict[int, np.ndarray] = {}
        wanted = set(wanted)
        decoded = (frame for packet in _demux(self.reopened, stream, self.input) for frame in packet.decode())
        for position, frame in enumerate(decoded):
            key = frame.pts if self.index.by_pts else position
            if key in wanted:
                if frame.is_corrupt:
                    raise VideoDecodingError(
                        f"Frame {self.index.pts.searchsorted(key) if self.index.by_pts else key} of {self.input.name} "
                        "is corrupt (the decoder concealed errors in it); re-encode or re-download the video."
                    )
                self._keep(frames, key, frame)
                if len(frames) == len(wanted):
                    break
        return frames


def _decode_from_here(
    container, stream, wanted: set[int], start_pts: int, known_pts: set[int], video_input: _VideoInput
) -> Iterator:
    """Decoded frames from `start_pts` on, after a seek to a keyframe at or before it, skipping non-reference frames
    nobody asked for.

    Packets before the first keyframe are dropped; frames before `start_pts` are decoded (they may be references) but
    not returned. Packets come in decode order, so the skip is decided per packet: a wanted frame's packet is decoded
    in full, every other packet with skip_frame "NONREF" (the decoder still decodes it when it is a reference for later
    frames). Raises `_SeekMissed` when the seek went past `start_pts`, or a frame is concealed (corrupt) or has a pts
    the index does not know: an in-order decode then decides.
    """
    codec = stream.codec_context
    started = False
    for packet in _demux(container, stream, video_input):
        if not started:
            if not packet.is_keyframe:
                continue
            if packet.pts is None or packet.pts > start_pts:
                raise _SeekMissed
            started = True
        codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        for frame in codec.decode(packet):
            if frame.pts is None or frame.pts >= start_pts and (frame.is_corrupt or frame.pts not in known_pts):
                raise _SeekMissed
            if frame.pts >= start_pts:
                yield frame


class _UnsupportedDisplayMatrix(Exception):
    """A display matrix other than a multiple of 90 degrees, mirrored or not."""


def _display_matrix_error(name: str, error: _UnsupportedDisplayMatrix) -> VideoDecodingError:
    return VideoDecodingError(
        f"{name} has a display matrix {error} that is not a rotation by a multiple of 90 degrees (mirrored or not); "
        "re-encode it with the transform applied."
    )


def _to_rgb(frame) -> np.ndarray:
    """(height, width, 3) uint8 RGB array of a decoded frame, as displayed: its display matrix applied."""
    from av.sidedata.sidedata import SideDataContainer, Type

    rgb = frame.to_ndarray(format="rgb24")
    # A container of its own: `frame.side_data` caches one on the frame, a reference cycle that keeps every decoded
    # frame (and the decoder's buffers) alive until the garbage collector runs.
    side_data = SideDataContainer(frame).get(Type.DISPLAYMATRIX)
    if side_data is None:
        return rgb
    transpose, flip_x, flip_y = _display_transform(np.frombuffer(bytes(side_data), dtype="<i4"))
    if transpose:
        rgb = rgb.transpose(1, 0, 2)
    if flip_x:
        rgb = rgb[:, ::-1]
    if flip_y:
        rgb = rgb[::-1]
    return np.ascontiguousarray(rgb)


def _display_transform(matrix: np.ndarray) -> tuple[bool, bool, bool]:
    """(transpose, flip_x, flip_y), applied in that order to an image (height, width, channels), that display it as an
    FFmpeg display matrix (9,) int32, 16.16 fixed point, says.

    FFmpeg maps a source pixel (x, y) (y pointing down) to x' = a x + c y, y' = b x + d y with [[a, b], [c, d]] the
    upper-left 2x2 block; only signed permutations (rotations by multiples of 90 degrees, with or without a mirror) are
    pixel-exact, anything else raises `_UnsupportedDisplayMatrix`.
    """
    linear = matrix.reshape(3, 3)[:2, :2] / 65536
    signs = np.round(linear).astype(int)
    is_signed_permutation = np.allclose(linear, signs, atol=1e-3) and (np.abs(signs).sum(0) == 1).all()
    if not is_signed_permutation or (np.abs(signs).sum(1) != 1).any():
        raise _UnsupportedDisplayMatrix(linear.round(3).tolist())
    (a, b), (c, d) = signs
    if a == 0:  # x' comes from y: transpose first, then x' = c y and y' = b x
        return True, c < 0, b < 0
    return False, a < 0, d < 0
