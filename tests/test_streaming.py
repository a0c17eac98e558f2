"""Streaming sessions on the causal projector against the offline model given all frames in one prompt."""

import contextlib
import io
import os
import socket
import threading
import time

import av
import numpy as np
import pytest
import torch
from media import decode_all, make_frames, make_processor, write_video
from modeling_utils import tiny_model_for
from PIL import Image
from transformers.cache_utils import DynamicLayer

from storm_hf import StormForConditionalGeneration
from storm_hf.commands import main
from storm_hf.hub import save_checkpoint
from storm_hf.processing import VideoIntakePolicy
from storm_hf.streaming import StormStreamingCacheLayer, StormStreamingSession, iter_video_frames


POOL = 3  # temporal_pool_size: splits of 1, 2, 4, 5 frames fall inside a pooling group
GENERATE = {"max_new_tokens": 4, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
QUESTION = "What happens?"


@pytest.fixture(scope="module")
def processor():
    return make_processor(temporal_pool_size=POOL)


def causal_model(processor, **overrides) -> StormForConditionalGeneration:
    return tiny_model_for(processor, temporal_pool_size=POOL, **{"mamba_bidirectional": False, **overrides})


@pytest.fixture(scope="module")
def model(processor):
    return causal_model(processor)


def offline(model, processor, frames, question=QUESTION, **processor_kwargs):
    """The offline reference: all frames in one prompt, through the processor and the model's normal forward."""
    chat = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        chat,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"do_sample_frames": False, **processor_kwargs},
    )
    return model.generate(**inputs, **GENERATE)


def assert_same_answer(streamed, reference):
    assert streamed.sequences.tolist() == reference.sequences.tolist()
    torch.testing.assert_close(streamed.logits[0], reference.logits[0], rtol=0, atol=1e-5)


def streamed_session(model, processor, frames, splits, **session_kwargs) -> StormStreamingSession:
    session = StormStreamingSession(model, processor, **session_kwargs)
    start = 0
    for size in splits:
        session.add_frames(frames[start : start + size])
        start += size
    assert start == len(frames)
    return session


@pytest.mark.parametrize(
    "splits, vision_batch_size",
    [
        ([7], 16),  # all at once: two complete groups and a partial one of 1 frame
        ([1] * 7, 16),  # frame by frame
        ([2, 2, 3], 16),  # splits inside groups
        ([5, 2], 2),  # micro-batches that split groups too
        ([4, 4], 3),  # 8 frames: a partial last group of 2
        ([6], 4),  # 6 frames: complete groups only
    ],
)
def test_streamed_answer_equals_offline_answer(model, processor, splits, vision_batch_size):
    frames = make_frames(sum(splits))
    session = streamed_session(model, processor, frames, splits, vision_batch_size=vision_batch_size)
    assert session.num_video_tokens == (sum(splits) // POOL) * 4  # 2x2 tokens per complete group
    assert_same_answer(session.generate(QUESTION, **GENERATE), offline(model, processor, frames))


def test_cache_layer_appends_in_place_like_dynamic_layer():
    generator = torch.Generator().manual_seed(0)
    ours, reference = StormStreamingCacheLayer(), DynamicLayer()
    capacities = set()
    for step, size in enumerate([5, 1, 1, 7, 3] + [1] * 100):
        keys, values = (torch.randn(1, 2, size, 4, generator=generator) for _ in range(2))
        for got, expected in zip(ours.update(keys, values), reference.update(keys, values)):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        if step in (3, 50):  # an answer cropped away: the next tokens are written over it
            ours.crop(-6)
            reference.crop(-6)
            assert ours.get_seq_length() == reference.get_seq_length()
        capacities.add(ours.key_buffer.shape[-2])
    assert len(capacities) <= 12  # grown by half when full: a few reallocations for 100 single-token steps
    assert ours.key_buffer.shape[-2] <= 1.5 * ours.get_seq_length() + 1


def test_stream_continues_after_an_answer(model, processor):
    frames = make_frames(11, seed=3)
    session = streamed_session(model, processor, frames[:5], [5])
    cached = session.cache.get_seq_length()
    assert_same_answer(session.generate(QUESTION, **GENERATE), offline(model, processor, frames[:5]))
    assert session.cache.get_seq_length() == cached  # the question, answer and partial group were cropped away

    session.add_frames(frames[5:9])
    session.add_frames(frames[9:])
    question = "And now?"
    expected = offline(model, processor, frames, question)
    assert_same_answer(session.generate(question, **GENERATE), expected)
    answer = processor.decode(expected.sequences[0, -GENERATE["max_new_tokens"] :], skip_special_tokens=True)
    assert session.ask(question, max_new_tokens=4, do_sample=False) == answer


def test_end_stream_appends_the_partial_group(model, processor):
    frames = make_frames(7, seed=4)
    session = streamed_session(model, processor, frames, [4, 3])
    assert session.end_stream() == 4  # the last group of one frame, pooled over that frame
    assert session.num_video_tokens == 12
    assert_same_answer(session.generate(QUESTION, **GENERATE), offline(model, processor, frames))
    with pytest.raises(RuntimeError, match="end_stream"):
        session.add_frames(frames[:1])


@pytest.mark.parametrize("num_frames", [7, 5])
def test_temporal_sampling_stride_keeps_the_offline_groups(model, processor, num_frames):
    frames = make_frames(num_frames, seed=5)
    session = streamed_session(model, processor, frames, [2] * (num_frames // 2) + [1], temporal_sampling_stride=2)
    expected = offline(model, processor, frames, temporal_sampling_stride=2)
    assert_same_answer(session.generate(QUESTION, **GENERATE), expected)


def test_spatial_pooling_streams_like_offline():
    processor = make_processor(temporal_pool_size=POOL, spatial_pool_size=2)
    model = causal_model(processor, spatial_pool_size=2)  # 2x2 tokens per frame -> 1 per pooled frame
    frames = make_frames(8, seed=9)
    session = streamed_session(model, processor, frames, [1, 4, 3])
    assert session.num_video_tokens == 2
    assert_same_answer(session.generate(QUESTION, **GENERATE), offline(model, processor, frames))


def test_frames_as_arrays_tensors_and_pil_images_give_the_same_cache(model, processor):
    frames = make_frames(4, seed=6)
    inputs = [frames, torch.from_numpy(frames), [Image.fromarray(frame) for frame in frames], list(frames)]
    caches = []
    for video in inputs:
        session = StormStreamingSession(model, processor)
        session.add_frames(video)
        caches.append(session.cache.layers[0].keys)
    for keys in caches[1:]:
        torch.testing.assert_close(keys, caches[0], rtol=0, atol=0)
    single = StormStreamingSession(model, processor)
    for frame in frames:  # one (height, width, 3) frame per call
        single.add_frames(frame)
    torch.testing.assert_close(single.cache.layers[0].keys, caches[0], rtol=0, atol=1e-5)


def test_bad_input_is_refused_with_a_clear_error(model, processor):
    bidirectional = causal_model(processor, mamba_bidirectional=True)
    with pytest.raises(ValueError, match="mamba_bidirectional=False"):
        StormStreamingSession(bidirectional, processor)
    session = StormStreamingSession(model, processor)
    with pytest.raises(ValueError, match="No frames yet"):
        session.ask(QUESTION)
    with pytest.raises(TypeError, match="iter_video_frames"):
        session.add_frames("clip.mp4")
    session.add_frames(make_frames(3))
    with pytest.raises(ValueError, match="num_beams"):
        session.ask(QUESTION, num_beams=2)
    with pytest.raises(FileNotFoundError, match="'missing.mp4' does not exist"):
        next(iter_video_frames("missing.mp4"))


def test_video_file_read_progressively_at_a_chosen_fps(tmp_path):
    frames = make_frames(25)
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    reference, times = decode_all(path)
    sampled = list(iter_video_frames(str(path), fps=2))
    assert [t for t, _ in sampled] == pytest.approx(times[::5])
    np.testing.assert_array_equal(np.stack([frame for _, frame in sampled]), reference[::5])
    every = list(iter_video_frames(str(path)))
    np.testing.assert_array_equal(np.stack([frame for _, frame in every]), reference)


def write_live_mpegts(file, frames: np.ndarray, written: list, interval: float = 0.02):
    """A live source: encodes frame after frame into `file` (a pipe) as an mpegts/h264 stream, flushing each packet."""
    with av.open(file, "w", format="mpegts", options={"flush_packets": "1"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"tune": "zerolatency", "g": "5"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            written.append(True)
            time.sleep(interval)
        for packet in stream.encode():
            container.mux(packet)


class TeeWriter(io.RawIOBase):
    """A writable sink that also keeps a copy of every byte, for the reference decoding."""

    def __init__(self, file, copy: io.BytesIO):
        self.file, self.copy = file, copy

    def writable(self):
        return True

    def write(self, data):
        self.copy.write(data)
        return self.file.write(data)


def assert_live_source_answered_while_written(model, processor, open_sink, source, frames):
    """A writer thread encodes `frames` live into the sink `open_sink()` returns; the session reads `source` (a file
    object or URL) through `iter_video_frames` at the same time. The frames received must be those a decoder of all
    the bytes written sees, the first one must arrive before the writer is done, and the answer must equal the offline
    model's on those frames."""
    written, copy = [], io.BytesIO()

    def writer():
        with open_sink() as sink:
            write_live_mpegts(TeeWriter(sink, copy), frames, written)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    session = StormStreamingSession(model, processor)
    received, written_at_first_frame = [], None
    live = VideoIntakePolicy(live_protocols={"tcp"}, deadline_s=None)
    options = {"probesize": "32", "analyzeduration": "0"}
    for _, frame in iter_video_frames(source, format="mpegts", options=options, policy=live):
        written_at_first_frame = len(written) if written_at_first_frame is None else written_at_first_frame
        session.add_frames(frame)
        received.append(frame)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert written_at_first_frame < len(frames)  # frames were read while the writer was still encoding
    copy.seek(0)
    with av.open(copy, format="mpegts") as container:
        reference = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert len(reference) == len(frames)
    np.testing.assert_array_equal(np.stack(received), reference)
    assert_same_answer(session.generate(QUESTION, **GENERATE), offline(model, processor, reference))


def test_live_pipe_source_is_answered_while_it_is_written(model, processor):
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        assert_live_source_answered_while_written(
            model, processor, lambda: os.fdopen(write_end, "wb", buffering=0), pipe, make_frames(30, seed=7)
        )


@contextlib.contextmanager
def connect_when_listening(port: int, timeout: float = 20.0):
    """A TCP connection to 127.0.0.1:`port`, retried until the reader listens there; yields its binary file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with connection, connection.makefile("wb", buffering=0) as file:
        yield file


def test_live_tcp_source_is_answered_while_it_is_written(model, processor):
    """A local network stream: the session listens on a loopback TCP port (FFmpeg's `tcp://...?listen=1`), a
    sender connects and streams mpegts/h264 as it encodes."""
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=20000"
    assert_live_source_answered_while_written(
        model, processor, lambda: connect_when_listening(port), url, make_frames(24, seed=9)
    )


def test_stream_command_prints_answers_as_the_video_plays(capsys, tmp_path, model, processor):
    save_checkpoint(model, processor, tmp_path / "ckpt")
    frames = make_frames(20, seed=8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=4)  # 5 s of video
    argv = ["stream", "--model", tmp_path / "ckpt", "--video", path, "--prompt", QUESTION, "--every", 2, "--fps", 2]
    assert main([*map(str, argv), "--max-new-tokens", "4"]) == 0
    decoded, _ = decode_all(path)
    expected = []
    # 2 fps keeps the frames at 0, 0.5, ..., 4.5 s: answers at 2.0 s (5 frames), 4.0 s (9) and the end (10)
    for seconds, num_frames in ((2.0, 5), (4.0, 9), (4.5, 10)):
        output = offline(model, processor, decoded[::2][:num_frames])
        answer = processor.decode(output.sequences[0, -GENERATE["max_new_tokens"] :], skip_special_tokens=True)
        expected.append(f"[{seconds:.1f}s] {answer}")
    assert capsys.readouterr().out.splitlines() == expected


def test_stream_command_refuses_a_bidirectional_model(capsys, tmp_path, processor):
    save_checkpoint(causal_model(processor, mamba_bidirectional=True), processor, tmp_path / "ckpt")
    path = write_video(tmp_path / "clip.mp4", make_frames(4))
    argv = ["stream", "--model", tmp_path / "ckpt", "--video", path, "--prompt", QUESTION, "--every", 1]
    assert main(list(map(str, argv))) == 1
    assert "mamba_bidirectional=False" in capsys.readouterr().err
