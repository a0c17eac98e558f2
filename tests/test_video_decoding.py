"""`read_video` against plain sequential PyAV decoding, on a corpus of containers and codecs written at test time.

Every readable file must give the frames a sequential decode gives (every frame in order, the same indices picked)
pixel for pixel, at the same times; every unreadable input a `VideoDecodingError` (or `OSError` for a missing path)
whose message names the input. Also: http(s) URLs from a local server (fetched whole, with or without range support),
and a seeded, bounded fuzz test of mutated files.
"""

import contextlib
import http.server
import io
import multiprocessing
import queue
from pathlib import Path

import av
import numpy as np
import pytest
from http_servers import http_server
from media import make_frames, write_image, write_video

from storm_hf.processing import (
    FormatRefusedError,
    ImageNotVideoError,
    VideoDecodingError,
    VideoIntakePolicy,
    VideoSourceRefusedError,
    read_video,
    video_decoding,
)
from storm_hf.processing.video_decoding import check_sampling_arguments


NUM_FRAMES = 30
GOP = {"gop_size": 8}  # keyframes to seek to within 30 frames
NO_SCENECUT = {"sc_threshold": "1000000000"}  # every test frame is a scene cut: without this, all are keyframes
H264_B_PYRAMID = "bframes=3:b-adapt=0:b-pyramid=normal:scenecut=0"  # IBBBP with reference B-frames
CORPUS = {  # file name -> write_video options; the extension picks the container
    "h264_b_pyramid.mp4": {"codec": "libx264", **GOP, "options": {"x264-params": H264_B_PYRAMID}},
    "h264_open_gop.mp4": {"codec": "libx264", **GOP, "options": {"x264-params": H264_B_PYRAMID + ":open-gop=1"}},
    "h264.mov": {"codec": "libx264", **GOP},
    "h264.m4v": {"codec": "libx264", **GOP},
    "h264.mkv": {"codec": "libx264", **GOP, "options": {"x264-params": H264_B_PYRAMID}},
    "h264_b_pyramid.ts": {"codec": "libx264", **GOP, "options": {"x264-params": H264_B_PYRAMID}},
    "h264_open_gop.ts": {"codec": "libx264", **GOP, "options": {"x264-params": H264_B_PYRAMID + ":open-gop=1"}},
    "h264.flv": {"codec": "libx264", **GOP, "options": {"x264-params": H264_B_PYRAMID}},
    "h264.3gp": {"codec": "libx264", **GOP},
    "hevc.mp4": {"codec": "libx265", **GOP, "options": {"x265-params": "log-level=error:bframes=3:scenecut=0"}},
    "hevc.mkv": {"codec": "libx265", **GOP, "options": {"x265-params": "log-level=error:bframes=3:scenecut=0"}},
    "mpeg4.avi": {"codec": "mpeg4", **GOP, "options": {"bf": "2", **NO_SCENECUT}},
    "mpeg4.3gp": {"codec": "mpeg4", **GOP, "options": {"bf": "2", **NO_SCENECUT}},
    "mpeg2.mpg": {"codec": "mpeg2video", "gop_size": 9, "options": {"bf": "2", **NO_SCENECUT}},
    "mpeg2.ts": {"codec": "mpeg2video", "gop_size": 9, "options": {"bf": "2", **NO_SCENECUT}},
    "vp8.webm": {"codec": "libvpx", **GOP},
    "vp8.ogv": {"codec": "libvpx", **GOP},
    "vp9.webm": {"codec": "libvpx-vp9", **GOP},
    "av1.mkv": {"codec": "libsvtav1", **GOP, "options": {"preset": "12"}},
    "av1.mp4": {"codec": "libsvtav1", **GOP, "options": {"preset": "12"}},
    "mjpeg.avi": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "mjpeg.mkv": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "vfr.mp4": {"codec": "libx264", **GOP, "frame_durations_ms": [40, 40, 170] * 10},
    "vfr.mkv": {"codec": "libvpx-vp9", **GOP, "frame_durations_ms": [40, 40, 170] * 10},
    "start_2s.mp4": {"codec": "libx264", **GOP, "frame_durations_ms": [100] * 30, "start_ms": 2000},
    "start_2s.mkv": {"codec": "libx264", **GOP, "frame_durations_ms": [100] * 30, "start_ms": 2000},
}
# Display matrices (PyAV's set_display_rotation: degrees counter-clockwise, then mirrors) -> what a viewer sees.
ORIENTATIONS = {
    "rot90.mp4": ({"rotation": 90}, lambda frames: np.rot90(frames, k=1, axes=(1, 2))),
    "rot180.mov": ({"rotation": 180}, lambda frames: frames[:, ::-1, ::-1]),
    "rot270.mp4": ({"rotation": 270}, lambda frames: np.rot90(frames, k=3, axes=(1, 2))),
    "hflip.mp4": ({"hflip": True}, lambda frames: frames[:, :, ::-1]),
    "vflip.mkv": ({"vflip": True}, lambda frames: frames[:, ::-1]),
    "rot90_hflip.mp4": ({"rotation": 90, "hflip": True}, lambda frames: np.rot90(frames, k=1, axes=(1, 2))[:, :, ::-1]),
}


def encoder_or_skip(codec: str):
    try:
        av.Codec(codec, "w")
    except (ValueError, av.FFmpegError):  # UnknownCodecError is a ValueError
        pytest.skip(f"this PyAV build has no {codec} encoder")


def sequential_decode(path, stream_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every frame of one stream in order with plain PyAV, (num_frames, height, width, 3) RGB as stored,
    and their times in seconds from the container start."""
    with av.open(str(path)) as container:
        start = (container.start_time or 0) / 1_000_000
        decoded = [
            (frame.to_ndarray(format="rgb24"), float(frame.time) - start)
            for frame in container.decode(container.streams[stream_index])
        ]
    return np.stack([frame for frame, _ in decoded]), np.array([time for _, time in decoded])


def pick(indices):
    return lambda metadata: np.array(indices)


def assert_reads_like_sequential(path, indices, stream_index=0, orientation=lambda frames: frames):
    reference, times = sequential_decode(path, stream_index)
    frames, metadata = read_video(path, pick(indices))
    np.testing.assert_array_equal(frames, orientation(reference[indices]), err_msg=f"frames {indices} of {path.name}")
    assert metadata.total_num_frames == len(reference)
    frame_interval = np.diff(times).min() if len(times) > 1 else 1.0
    np.testing.assert_allclose(metadata.timestamps, times[indices], atol=frame_interval / 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return Corpus(directory)


class Corpus:
    """Files of the corpus, each written on first use."""

    def __init__(self, directory: Path):
        self.directory, self.frames, self.paths = directory, make_frames(NUM_FRAMES), {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.paths:
            options = CORPUS[name] if name in CORPUS else ORIENTATIONS[name][0]
            encoder_or_skip(options.get("codec", "libx264"))
            self.paths[name] = write_video(self.directory / name, self.frames, **options)
        return self.paths[name]


def test_corpus_files_have_what_their_names_promise(corpus):
    def packets(name):
        with av.open(str(corpus[name])) as container:
            return [(packet.pts, packet.dts, packet.is_keyframe) for packet in container.demux(video=0) if packet.size]

    for name in ("h264_open_gop.mp4", "h264_open_gop.ts"):  # frames after a later keyframe that are shown before it
        decode_order = packets(name)
        leading = [
            position
            for position, (pts, _, key) in enumerate(decode_order)
            if key and position > 0 and decode_order[position + 1][0] < pts
        ]
        assert leading, f"{name} has no open GOP"
    for name in ("h264_b_pyramid.ts", "mpeg2.ts", "mpeg2.mpg", "h264.flv", "mpeg4.avi"):  # dts < pts at keyframes
        assert any(key and dts < pts for pts, dts, key in packets(name)[1:]), name
    for name in ("start_2s.mp4", "start_2s.mkv"):
        with av.open(str(corpus[name])) as container:
            assert float(next(container.decode(video=0)).time) == pytest.approx(2.0), name
    assert len(set(np.diff(sequential_decode(corpus["vfr.mkv"])[1]).round(3))) == 2  # 40 ms and 170 ms apart


@pytest.mark.parametrize("name", CORPUS)
def test_sampled_frames_equal_sequential_decoding(corpus, name):
    assert_reads_like_sequential(corpus[name], [0, 5, 6, 13, 22, 29])  # neighbours, a frame inside a GOP, the last


@pytest.mark.parametrize(
    "name", [name for name in CORPUS if "b_pyramid" in name or "open_gop" in name or "mpeg" in name]
)
def test_every_frame_alone_equals_sequential_decoding(corpus, name):
    # Each read seeks to the keyframe before its frame: B-frames, open GOPs and dts < pts are where seeks go wrong.
    reference, _ = sequential_decode(corpus[name])
    for index in range(NUM_FRAMES):
        frames, _ = read_video(corpus[name], pick([index]))
        np.testing.assert_array_equal(frames[0], reference[index], err_msg=f"frame {index} of {name}")


@pytest.mark.parametrize(
    "name",
    [
        "h264_b_pyramid.mp4",
        "h264_open_gop.mp4",
        "h264.mkv",
        "h264_b_pyramid.ts",
        "h264_open_gop.ts",
        "mpeg2.mpg",
        "h264.flv",
        "mpeg4.avi",
        "vp8.webm",
        "vp8.ogv",
        "hevc.mp4",
        "av1.mkv",
    ],
)
def test_containers_are_read_by_seeking_without_the_in_order_fallback(corpus, name, monkeypatch):
    def no_fallback(self, wanted):
        raise AssertionError(f"{name}: a seek was off, the reader fell back to decoding in order")

    monkeypatch.setattr(video_decoding._FrameReader, "_in_order", no_fallback)
    assert_reads_like_sequential(corpus[name], [2, 17, 27])


def test_in_order_fallback_gives_the_same_frames(corpus, monkeypatch):
    def seek_never_lands(self, wanted):
        raise video_decoding._SeekMissed

    monkeypatch.setattr(video_decoding._FrameReader, "_by_seeking", seek_never_lands)
    for name in ("h264_b_pyramid.ts", "h264_open_gop.mp4", "vp9.webm"):
        assert_reads_like_sequential(corpus[name], [0, 9, 10, 29])
    # The fallback opens the input a second time: file objects are read again from where the video starts.
    reference, _ = sequential_decode(corpus["h264.mkv"])
    with open(corpus["h264.mkv"], "rb") as file:
        for source in (file, io.BytesIO(corpus["h264.mkv"].read_bytes())):
            np.testing.assert_array_equal(read_video(source, pick([3, 26]))[0], reference[[3, 26]])


PROGRESS_INDICES = [0, 5, 5, 13, 29]  # 4 distinct frames: a frame sampled twice is decoded once


@pytest.mark.parametrize("name", ["h264_b_pyramid.mp4", "h264_open_gop.ts", "vp9.webm"])
def test_progress_callback_reports_each_decoded_frame_once(corpus, name):
    calls = []
    frames, _ = read_video(corpus[name], pick(PROGRESS_INDICES), progress_callback=lambda *call: calls.append(call))
    assert calls == [(done, 4) for done in range(1, 5)]
    np.testing.assert_array_equal(frames, read_video(corpus[name], pick(PROGRESS_INDICES))[0])


def test_progress_callback_counts_on_through_the_in_order_fallback(corpus, monkeypatch):
    by_seeking = video_decoding._FrameReader._by_seeking

    def misses_after_two_frames(self, wanted):
        by_seeking(self, wanted[:2])  # decodes (and reports) two frames, then a seek "misses"
        raise video_decoding._SeekMissed

    monkeypatch.setattr(video_decoding._FrameReader, "_by_seeking", misses_after_two_frames)
    calls = []
    path = corpus["h264_b_pyramid.mp4"]
    frames, _ = read_video(path, pick(PROGRESS_INDICES), progress_callback=lambda *call: calls.append(call))
    assert calls == [(done, 4) for done in range(1, 5)]  # the fallback decodes all 4 again but reports frames 3 and 4
    np.testing.assert_array_equal(frames, sequential_decode(path)[0][PROGRESS_INDICES])


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_display_matrix_rotations_and_mirrors_are_applied(corpus, name):
    orientation = ORIENTATIONS[name][1]
    assert_reads_like_sequential(corpus[name], [0, 9, 20], orientation=orientation)
    frames, metadata = read_video(corpus[name], pick([0, 9, 20]))
    assert (metadata.height, metadata.width) == frames.shape[1:3]
    # Independent of the decoder's output: close to the pictures that were encoded, turned the same way.
    source = orientation(make_frames(NUM_FRAMES)[[0, 9, 20]]).astype(int)
    assert np.abs(frames.astype(int) - source).mean() < 8


def test_variable_frame_rate_times_and_start_offsets(corpus):
    _, metadata = read_video(corpus["vfr.mp4"], pick([0, 1, 2, 3]))
    np.testing.assert_allclose(metadata.timestamps, [0, 0.04, 0.08, 0.25], atol=1e-3)
    for name in ("start_2s.mp4", "start_2s.mkv"):
        _, metadata = read_video(corpus[name], pick([0, 10]))
        reference_start = sequential_decode(corpus[name])[1][0]
        assert metadata.timestamps == pytest.approx([reference_start, reference_start + 1.0], abs=1e-3)


def write_streams(path: Path, streams: list[dict]) -> Path:
    """A file with several streams, muxed in order: each dict has `codec` and `frames` (video) or `seconds` (audio),
    optionally `disposition`. Video frames are interleaved by time (10 fps)."""
    with av.open(str(path), "w") as container:
        encoders = []
        for spec in streams:
            if "seconds" in spec:
                stream = container.add_stream(spec["codec"], rate=16000)
                stream.layout = "mono"
            else:
                stream = container.add_stream(spec["codec"], rate=10)
                stream.height, stream.width = spec["frames"].shape[1:3]
                stream.pix_fmt = spec.get("pix_fmt", "yuv420p")
            if "disposition" in spec:
                stream.disposition = spec["disposition"]
            encoders.append((stream, spec))
        container.start_encoding()
        for stream, spec in encoders:
            if "seconds" in spec:
                samples = np.sin(np.arange(int(16000 * spec["seconds"])) / 5).astype(np.float32)[None] * 0.1
                for start in range(0, samples.shape[1], 1024):
                    frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
                    frame.sample_rate, frame.pts = 16000, start
                    for packet in stream.encode(frame):
                        container.mux(packet)
            else:
                for array in spec["frames"]:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def test_best_video_stream_is_read_never_a_cover_picture_or_a_still(tmp_path):
    frames = make_frames(NUM_FRAMES)
    still = {"codec": "mjpeg", "frames": make_frames(1, seed=1), "pix_fmt": "yuvj420p"}
    video = {"codec": "libx264", "frames": frames}
    cover = {**still, "disposition": av.stream.Disposition.attached_pic}
    # The mov muxer writes the cover picture after the video track; Matroska keeps a plain one-frame still first.
    for path, video_index in ((write_streams(tmp_path / "cover.mp4", [cover, video]), 0),
                              (write_streams(tmp_path / "still_first.mkv", [still, video]), 1)):  # fmt: skip
        with av.open(str(path)) as container:
            assert len(container.streams.video) == 2
        assert_reads_like_sequential(path, [0, 14, 29], stream_index=video_index)


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
def test_streams_of_different_lengths_use_the_chosen_streams_own_duration(tmp_path, extension):
    path = write_streams(
        tmp_path / f"two_lengths.{extension}",
        [{"codec": "libx264", "frames": make_frames(10)}, {"codec": "libx264", "frames": make_frames(NUM_FRAMES)}],
    )
    with av.open(str(path)) as container:
        chosen = container.streams.best("video").index  # PyAV's (FFmpeg's) choice
    reference, _ = sequential_decode(path, chosen)
    assert_reads_like_sequential(path, [0, len(reference) - 1], stream_index=chosen)
    with_audio = write_streams(
        tmp_path / f"long_audio.{extension}",
        [{"codec": "libx264", "frames": make_frames(10)}, {"codec": "aac", "seconds": 5.0}],
    )
    assert_reads_like_sequential(with_audio, [0, 9])  # 1 s of video, 5 s of audio: not "truncated"


# Inputs that are not (readable) videos: a named error that says what to do.


def test_audio_only_and_cover_only_files(tmp_path):
    audio = write_streams(tmp_path / "song.m4a", [{"codec": "aac", "seconds": 1.0}])
    with pytest.raises(VideoDecodingError, match="song.m4a' contains no video frames \\(only audio"):
        read_video(audio)
    cover = {"codec": "mjpeg", "frames": make_frames(1), "pix_fmt": "yuvj420p"}
    cover_only = write_streams(
        tmp_path / "album.mp4", [{"codec": "aac", "seconds": 1.0}, {**cover, "disposition": 1024}]
    )
    with pytest.raises(VideoDecodingError, match="album.mp4' holds only a cover picture"):
        read_video(cover_only)


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"  # FFmpeg's tty demuxer would render it as 640x400 "ansi" frames
    path.write_text("these are not the frames you are looking for\n" * 50)
    with pytest.raises(FormatRefusedError, match="notes.txt' could not be opened as a video: it is a text file"):
        read_video(path)


def test_images_are_named_as_images(tmp_path):
    with pytest.raises(ImageNotVideoError, match="photo.png' is an image \\(PNG format\\)"):
        read_video(write_image(tmp_path / "photo.png"))
    one_jpeg = write_video(tmp_path / "still.avi", make_frames(1), codec="mjpeg", pix_fmt="yuvj420p")
    with pytest.raises(VideoDecodingError, match="still.avi' is an image \\(a single mjpeg picture\\)"):
        read_video(one_jpeg)
    one_frame = write_video(tmp_path / "one_frame.mp4", make_frames(1))
    assert read_video(one_frame)[0].shape == (1, 48, 64, 3)  # a one-frame video is still a video...
    with pytest.raises(VideoDecodingError, match="one_frame.mp4.*single frame: if it is an image, pass it as an"):
        read_video(one_frame, lambda metadata: _too_many(metadata, 8))  # ...but asking it for 8 frames names it


def _too_many(metadata, num_frames):
    raise ValueError(f"Asked for num_frames={num_frames} but the video has only {metadata.total_num_frames} frames")


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"'{tmp_path}' is a directory, not a video file"):
        read_video(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.mp4' does not exist"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoSourceRefusedError, match="'concat:a.mp4|b.mp4' uses the protocol 'concat:'"):
        read_video("concat:a.mp4|b.mp4")  # FFmpeg protocols are not opened from paths


def test_file_objects_that_cannot_be_read(corpus, tmp_path):
    path = corpus["vp8.webm"]
    with open(path) as text_file, pytest.raises(VideoDecodingError, match="vp8.webm' is open in text mode.*'rb'"):
        read_video(text_file)
    with open(path, "rb") as closed:
        pass
    with pytest.raises(VideoDecodingError, match="vp8.webm' is closed"):
        read_video(closed)

    class Pipe(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False

    with pytest.raises(VideoDecodingError, match="file object 'Pipe' is not seekable"):
        read_video(Pipe())
    with pytest.raises(VideoDecodingError, match="the 4096 bytes passed as a video could not be opened"):
        read_video(bytes(4096))


def test_file_object_positioned_after_a_header_is_read_from_there(corpus):
    data = corpus["h264.mkv"].read_bytes()
    file = io.BytesIO(b"header" + data)
    file.seek(6)
    frames, _ = read_video(file, pick([3, 20]))
    np.testing.assert_array_equal(frames, sequential_decode(corpus["h264.mkv"])[0][[3, 20]])


@pytest.mark.parametrize(
    "indices, message",
    [([], "non-empty"), ([[0, 1]], "non-empty"), ([0.5], "whole numbers"), ([0, 30], "out of range"), ([-1], "range")],
)
def test_sampler_output_is_checked_and_names_the_video(corpus, indices, message):
    with pytest.raises(VideoDecodingError, match=f"vp8.webm.*{message}|{message}.*vp8.webm"):
        read_video(corpus["vp8.webm"], pick(indices))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_frames": 0}, "`num_frames` must be a positive whole number of frames, got 0"),
        ({"num_frames": -1}, "`num_frames` must be a positive whole number of frames, got -1"),
        ({"num_frames": 2.5}, "`num_frames` must be a positive whole number"),
        ({"num_frames": True}, "`num_frames` must be a positive whole number"),
        ({"fps": 0}, "`fps` must be a positive, finite number of frames per second, got 0"),
        ({"fps": -1}, "`fps` must be a positive, finite number"),
        ({"fps": float("nan")}, "`fps` must be a positive, finite number .* got nan"),
        ({"fps": float("inf")}, "`fps` must be a positive, finite number .* got inf"),
        ({"fps": "2"}, "`fps` must be a positive, finite number"),
        ({"min_frames": 0}, "`min_frames` must be a positive whole number"),
        ({"max_frames": -4}, "`max_frames` must be a positive whole number"),
        ({"min_frames": 8, "max_frames": 4}, "`min_frames=8` is larger than `max_frames=4`"),
        ({"num_frames": 4, "fps": 2}, "mutually exclusive"),
    ],
)
def test_sampling_arguments_are_checked_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        check_sampling_arguments(**arguments)


def test_valid_sampling_arguments_pass():
    check_sampling_arguments()
    check_sampling_arguments(num_frames=np.int64(8), min_frames=1, max_frames=8)
    check_sampling_arguments(fps=0.5, min_frames=2)


# http(s) URLs, served from 127.0.0.1 by the test.


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.data` at any path; with `server.ranges`, honours `Range: bytes=start-end` (206)."""

    def do_GET(self):
        data, requested = self.server.data, self.headers.get("Range")
        self.server.log.append(requested)
        start, end = 0, len(data) - 1
        if self.server.ranges and requested and requested.startswith("bytes="):
            first, _, last = requested[len("bytes=") :].partition("-")
            start, end = int(first or 0), min(int(last) if last else end, end)
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        if self.server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        try:
            self.wfile.write(data[start : end + 1])
        except (BrokenPipeError, ConnectionResetError):  # FFmpeg closes a connection when it seeks
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def noisy_videos(tmp_path_factory) -> dict[str, Path]:
    """Videos of noise, hundreds of kilobytes: larger than FFmpeg's read buffer, so that seeks need new requests."""
    frames = np.random.default_rng(0).integers(0, 256, size=(NUM_FRAMES, 120, 160, 3), dtype=np.uint8)
    directory = tmp_path_factory.mktemp("noisy")
    return {extension: write_video(directory / f"noise.{extension}", frames, **GOP) for extension in ("mkv", "mp4")}


LOOPBACK = VideoIntakePolicy(trusted_hosts=("127.0.0.1",), read_timeout_s=10)  # the test servers are internal


@pytest.mark.parametrize("ranges", [True, False], ids=["range requests", "no range support"])
def test_http_url_reads_like_the_file(noisy_videos, ranges):
    path = noisy_videos["mkv"]
    with http_server(_Handler, data=path.read_bytes(), ranges=ranges, log=[]) as server:
        frames, metadata = read_video(f"{server.url}/clip.mkv", pick([2, 17, 27]), policy=LOOPBACK)
    np.testing.assert_array_equal(frames, sequential_decode(path)[0][[2, 17, 27]])
    assert metadata.total_num_frames == NUM_FRAMES
    assert server.log == [None], server.log  # fetched once, whole (no range requests), then decoded locally


def test_http_mp4_with_its_index_at_the_end_is_read_without_range_requests(noisy_videos):
    # PyAV writes the mp4 index (moov) after the frames: read whole (within the byte budget), it needs no seeking.
    with http_server(_Handler, data=noisy_videos["mp4"].read_bytes(), ranges=False, log=[]) as server:
        frames = read_video(f"{server.url}/clip.mp4", pick([5, 25]), policy=LOOPBACK)[0]
    np.testing.assert_array_equal(frames, sequential_decode(noisy_videos["mp4"])[0][[5, 25]])


def test_unreachable_and_silent_urls_fail_within_the_timeout():
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts connections, never answers
    port = listener.getsockname()[1]
    policy = LOOPBACK.replace(read_timeout_s=1)
    try:
        started = time.monotonic()
        with pytest.raises(VideoDecodingError, match=f"'http://127.0.0.1:{port}/video.mp4' did not answer within 1s"):
            read_video(f"http://127.0.0.1:{port}/video.mp4", policy=policy)
        assert time.monotonic() - started < 10
    finally:
        listener.close()
    with pytest.raises(VideoDecodingError, match=f"'http://127.0.0.1:{port}/gone.mp4' could not be fetched"):
        read_video(f"http://127.0.0.1:{port}/gone.mp4", policy=policy)  # nothing listens there any more


# Fuzzing: mutated bytes of valid files either decode as a sequential decode of the same bytes does, or raise a named
# error. Each decode runs in a worker process with a time limit: a hang or a crash fails the test, not the test run.

FUZZ_FILES = ["h264_b_pyramid.mp4", "h264.mkv", "h264_b_pyramid.ts", "vp9.webm"]
FUZZ_CASES_PER_FILE = 12
FUZZ_TIME_LIMIT_S = 20  # per case; generous for a loaded machine (a case takes well under a second)


def _fuzz_case(data: bytes, indices: list[int]) -> tuple[tuple, list]:
    """read_video on `data`, and a sequential decode of the same bytes: (outcome, reference).

    The sequential decode is the ffmpeg command line's: every packet in order, a packet the decoder rejects is dropped
    and decoding goes on (plain `container.decode()` would stop at the first one)."""
    try:
        frames, metadata = read_video(
            data, lambda metadata: np.array([i for i in indices if i < metadata.total_num_frames])
        )
        outcome = ("frames", frames, (metadata.frames_indices, metadata.frames_timestamps))
    except VideoDecodingError as error:
        outcome = ("error", str(error), None)
    except Exception as error:  # noqa: BLE001 - anything else is a defect, reported to the test
        outcome = ("crash", f"{type(error).__name__}: {error}", None)
    reference = []  # (seconds from the container start or None, frame), in order
    with (  # PyAV raises IndexError when an MPEG-TS announces a new stream mid-file
        contextlib.suppress(av.FFmpegError, VideoDecodingError, IndexError),
        av.open(io.BytesIO(data), metadata_errors="replace") as container,
    ):
        stream = video_decoding._best_video_stream(container, "fuzz")
        start = (container.start_time or 0) / 1_000_000
        for packet in container.demux(stream):
            with contextlib.suppress(av.FFmpegError):
                for frame in packet.decode():
                    time = None if frame.time is None else float(frame.time) - start
                    reference.append((time, frame.to_ndarray(format="rgb24")))
    return outcome, reference


def _fuzz_worker(cases, results):
    results.put("ready")
    for data, indices in iter(cases.get, None):
        results.put(_fuzz_case(data, indices))


class FuzzWorker:
    """A spawned process running `_fuzz_case`s (spawned, not forked: a fork of a process with threads can deadlock)."""

    def __init__(self):
        self.process = None

    def run(self, data: bytes, indices: list[int]):
        if self.process is None:
            context = multiprocessing.get_context("spawn")
            self.cases, self.results = context.Queue(), context.Queue()
            self.process = context.Process(target=_fuzz_worker, args=(self.cases, self.results), daemon=True)
            self.process.start()
            assert self.results.get(timeout=300) == "ready"  # imports take a while on a loaded machine
        self.cases.put((data, indices))
        try:
            return self.results.get(timeout=FUZZ_TIME_LIMIT_S)
        except queue.Empty:
            self.close()
            return None

    def close(self):
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None


@pytest.fixture(scope="module")
def fuzz_worker():
    worker = FuzzWorker()
    yield worker
    worker.close()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip, overwrite, drop or duplicate a few bytes or a span of `data`."""
    data = bytearray(data)
    kind = rng.integers(4)
    position = int(rng.integers(len(data)))
    span = slice(position, position + int(rng.integers(1, 64)))
    if kind == 0:
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[at] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        data[span] = rng.integers(0, 256, size=len(data[span]), dtype=np.uint8).tobytes()
    elif kind == 2:
        del data[span]
    else:
        data[position:position] = data[span]
    return bytes(data)


@pytest.mark.parametrize("name", FUZZ_FILES)
def test_fuzzed_files_decode_like_sequential_decoding_or_raise_a_named_error(corpus, fuzz_worker, name):
    rng = np.random.default_rng(FUZZ_FILES.index(name))
    data = corpus[name].read_bytes()
    decoded = 0
    for case in range(FUZZ_CASES_PER_FILE):
        answer = fuzz_worker.run(mutate(data, rng), [0, 7, 15, 29])
        assert answer is not None, f"case {case} of {name}: no answer within {FUZZ_TIME_LIMIT_S}s (hang or crash)"
        (kind, value, sampled), reference = answer
        assert kind != "crash", f"case {case} of {name}: {value}"
        if kind == "error":
            assert "bytes passed as a video" in value, value
            continue
        decoded += 1
        indices, timestamps = sampled
        for frame, index, time in zip(value, indices, timestamps or [None] * len(value)):
            if time is None:  # frames without times are addressed by position
                candidates = [reference[index][1]] if index < len(reference) else []
            else:
                candidates = [candidate for at, candidate in reference if at is not None and abs(at - time) < 1e-6]
            assert any(np.array_equal(frame, candidate) for candidate in candidates), (
                f"case {case} of {name}: frame {index} ({time}s) differs from the sequential decode of the same bytes"
            )
    assert decoded > 0, f"no mutated {name} decoded at all: the comparison with the reference never ran"


def test_resolution_change_is_named_and_frames_without_distinct_pts_are_read_by_position(tmp_path):
    # Two MPEG-TS files back to back (as a capture that switches resolution): their timestamps overlap, so frames are
    # addressed by their position in a sequential decode.
    first = write_video(tmp_path / "a.ts", make_frames(10), frame_durations_ms=[100] * 10, gop_size=5)
    second = write_video(tmp_path / "b.ts", make_frames(10, 24, 32), frame_durations_ms=[100] * 10, start_ms=1000)
    path = tmp_path / "switch.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    with av.open(str(path)) as container:
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(reference) == 20
    for indices in ([0, 5, 9], [10, 12, 19]):
        frames, metadata = read_video(path, pick(indices))
        np.testing.assert_array_equal(frames, np.stack([reference[index] for index in indices]))
        assert metadata.total_num_frames == 20
    with pytest.raises(VideoDecodingError, match="switch.ts' changes its frame size .*24x32 and 48x64"):
        read_video(path, pick([0, 15]))
