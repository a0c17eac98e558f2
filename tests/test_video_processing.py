"""StormVideoProcessor and the PyAV reader, on real files written by the tests (tests/media.py)."""

import io

import av
import numpy as np
import pytest
import torch
from av.video.frame import PictureType
from media import decode_all, make_frames, write_image, write_video

from storm_hf.processing import StormVideoProcessor, VideoDecodingError, read_video, video_decoding


NUM_FRAMES = 30
# x264 and mpeg4 choose no B-frames for these frames (every frame is a scene cut) unless told to.
H264_BFRAMES = {"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal:scenecut=0"}  # IBBBPBBP: reference B-frames too
MPEG4_BFRAMES = {"bf": "2", "sc_threshold": "1000000000"}  # IBBPBBP
CODECS = {  # file name -> encoder options; GOP 8 so that reading 30 frames has keyframes to seek to
    "h264.mp4": {"codec": "libx264", "gop_size": 8},
    "h264_bframes.mp4": {"codec": "libx264", "gop_size": 8, "options": H264_BFRAMES},
    "mpeg4.mp4": {"codec": "mpeg4", "gop_size": 8},
    "mpeg4_bframes.mp4": {"codec": "mpeg4", "gop_size": 8, "options": MPEG4_BFRAMES},
    "vp9.webm": {"codec": "libvpx-vp9", "gop_size": 8},
    "av1.mkv": {"codec": "libsvtav1", "gop_size": 8, "options": {"preset": "12"}},
    "h264.mkv": {"codec": "libx264", "gop_size": 8},
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("videos")
    frames = make_frames(NUM_FRAMES)
    written = {name: write_video(directory / name, frames, **options) for name, options in CODECS.items()}
    written["vfr.mp4"] = write_video(directory / "vfr.mp4", frames, frame_durations_ms=[40, 40, 170] * 10)
    written["rotated.mp4"] = write_video(directory / "rotated.mp4", frames, rotation=90)
    written["odd.webm"] = write_video(directory / "odd.webm", make_frames(NUM_FRAMES, 47, 63), codec="libvpx-vp9")
    return written


def uniform(num_frames):
    return lambda metadata: np.round(np.linspace(0, metadata.total_num_frames - 1, num_frames)).astype(int)


@pytest.mark.parametrize("name", [*CODECS, "vfr.mp4", "odd.webm"])
def test_sampled_frames_and_timestamps_equal_sequential_decoding(videos, name):
    reference, reference_times = decode_all(videos[name])
    indices = np.array([0, 5, 6, 13, 22, 29])  # neighbours, a frame inside a GOP, and the last frame
    frames, metadata = read_video(videos[name], lambda metadata: indices)
    np.testing.assert_array_equal(frames, reference[indices])
    assert metadata.total_num_frames == len(reference) == NUM_FRAMES
    assert metadata.frames_indices == indices.tolist()
    np.testing.assert_allclose(metadata.timestamps, np.array(reference_times)[indices], atol=1e-6)
    assert (metadata.height, metadata.width) == reference.shape[1:3]


@pytest.mark.parametrize("name", CODECS)
def test_every_frame_alone_and_in_pairs_equals_sequential_decoding(videos, name):
    # Each read seeks to a keyframe and walks to its targets decoding only reference frames; a pair also reads on.
    reference, _ = decode_all(videos[name])
    singles = [[index] for index in range(NUM_FRAMES)]
    pairs = [[first, second] for first in range(0, NUM_FRAMES, 3) for second in range(first + 1, NUM_FRAMES, 4)]
    for indices in singles + pairs:
        frames, _ = read_video(videos[name], lambda metadata: np.array(indices))
        np.testing.assert_array_equal(frames, reference[indices], err_msg=f"frames {indices} of {name}")


def test_b_frame_videos_have_non_reference_and_reference_b_frames(videos):
    kinds = frame_kinds(videos["h264_bframes.mp4"])
    assert {"B", "B (no reference)", "P", "I"} <= set(kinds)  # b-pyramid: some B-frames are references
    assert {"B (no reference)", "P", "I"} <= set(frame_kinds(videos["mpeg4_bframes.mp4"]))


def test_walk_decodes_only_reference_frames_and_the_target(videos, monkeypatch):
    decoded = []
    decode_from_here = video_decoding._decode_from_here

    def counting(*args):
        for frame in decode_from_here(*args):
            decoded.append(round(frame.time * 10))  # 10 fps: the frame index
            yield frame

    monkeypatch.setattr(video_decoding, "_decode_from_here", counting)
    kinds = frame_kinds(videos["h264_bframes.mp4"])
    target = 15  # a P-frame after non-reference and reference B-frames (GOP from frame 8)
    read_video(videos["h264_bframes.mp4"], lambda metadata: np.array([target]))
    assert kinds[target] == "P" and "B (no reference)" in kinds[8:target] and "B" in kinds[8:target]
    assert decoded == [index for index in range(8, target + 1) if kinds[index] != "B (no reference)"]


def frame_kinds(path) -> list[str]:
    """Picture type of every frame in presentation order, "B (no reference)" for B-frames no other frame uses."""
    with av.open(str(path)) as container:
        types = [PictureType(frame.pict_type).name for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        container.streams.video[0].codec_context.skip_frame = "NONREF"
        references = {round(frame.time * 10) for frame in container.decode(video=0)}  # 10 fps: the frame index
    return [kind if index in references or kind != "B" else "B (no reference)" for index, kind in enumerate(types)]


def test_frame_rate_is_measured_from_timestamps(videos):
    _, metadata = read_video(videos["vp9.webm"])  # webm stores no frame count
    assert metadata.total_num_frames == NUM_FRAMES and metadata.fps == pytest.approx(10)
    _, reference_times = decode_all(videos["vfr.mp4"])
    _, metadata = read_video(videos["vfr.mp4"])
    assert metadata.fps == pytest.approx((NUM_FRAMES - 1) / (reference_times[-1] - reference_times[0]))


def test_reader_seeks_instead_of_decoding_everything(videos, monkeypatch):
    decoded = []
    decode_from_here = video_decoding._decode_from_here

    def counting(*args):
        for frame in decode_from_here(*args):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_decoding, "_decode_from_here", counting)
    reference, _ = decode_all(videos["h264.mp4"])
    frames, _ = read_video(videos["h264.mp4"], lambda metadata: np.array([1, 27]))
    np.testing.assert_array_equal(frames, reference[[1, 27]])
    assert len(decoded) < NUM_FRAMES // 2


def test_rotated_video_is_returned_upright(videos):
    reference, _ = decode_all(videos["rotated.mp4"])  # stored frames, before the display matrix
    frames, metadata = read_video(videos["rotated.mp4"], lambda metadata: np.array([0, 9]))
    # The display matrix turns the picture 90 degrees counter-clockwise (ffmpeg's convention).
    np.testing.assert_array_equal(frames, np.rot90(reference[[0, 9]], k=1, axes=(1, 2)))
    assert (metadata.height, metadata.width) == (64, 48)
    source = np.rot90(make_frames(NUM_FRAMES)[[0, 9]], k=1, axes=(1, 2)).astype(int)
    assert np.abs(frames.astype(int) - source).mean() < 8  # close to the encoded pictures, turned the same way


def test_path_bytes_and_file_object_give_the_same_frames(videos):
    path = videos["vp9.webm"]
    expected, _ = read_video(path, uniform(4))
    for source in (str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), open(path, "rb")):
        frames, _ = read_video(source, uniform(4))
        np.testing.assert_array_equal(frames, expected)


def test_uniform_sampling_is_rounded_linspace(videos):
    processor = StormVideoProcessor()
    output = processor(str(videos["h264.mp4"]), num_frames=7, return_metadata=True)
    assert output["video_metadata"][0].frames_indices == [0, 5, 10, 14, 19, 24, 29]
    assert output["pixel_values_videos"].shape == (1, 7, 3, 448, 448)
    assert output["video_num_frames"].tolist() == [7]


def test_fps_sampling_with_min_and_max_frames(videos):
    processor = StormVideoProcessor()

    def metadata(**kwargs):
        return processor(str(videos["h264.mp4"]), return_metadata=True, **kwargs)["video_metadata"][0]

    assert len(metadata(fps=2).frames_indices) == 6  # 3 s at 2 fps
    assert len(metadata(fps=2, max_frames=4).frames_indices) == 4
    assert len(metadata(fps=1, min_frames=5).frames_indices) == 5
    sampled = metadata(fps=2)
    np.testing.assert_allclose(sampled.timestamps, np.array(sampled.frames_indices) / 10)
    with pytest.raises(ValueError, match="only 30 frames"):
        processor(str(videos["h264.mp4"]), fps=20)
    with pytest.raises(ValueError, match="mutually exclusive"):
        processor(str(videos["h264.mp4"]), fps=2, num_frames=4)
    with pytest.raises(ValueError, match="outside"):
        processor(str(videos["h264.mp4"]), num_frames=8, max_frames=4)


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"fps": 0}, "`fps`"),
        ({"fps": -1}, "`fps`"),
        ({"fps": float("nan")}, "`fps`"),
        ({"num_frames": 0}, "`num_frames`"),
        ({"num_frames": -1}, "`num_frames`"),
        ({"fps": 1, "min_frames": 5, "max_frames": 2}, "`min_frames=5`"),
    ],
)
def test_meaningless_sampling_arguments_are_named(videos, arguments, named):
    """fps=0 used to return one frame silently, num_frames=0 / fps=nan failed inside numpy."""
    processor = StormVideoProcessor()
    with pytest.raises(ValueError, match=named):
        processor(str(videos["h264.mp4"]), **{"num_frames": None, **arguments})
    with pytest.raises(ValueError, match=named):
        processor(
            make_frames(20), video_metadata={"total_num_frames": 20, "fps": 10}, **{"num_frames": None, **arguments}
        )


def test_decoded_frames_are_accepted_and_fps_needs_their_frame_rate(videos):
    processor = StormVideoProcessor()
    frames = make_frames(20)
    array_output = processor(frames, num_frames=5)
    tensor_output = processor(torch.from_numpy(frames).permute(0, 3, 1, 2), num_frames=5)
    from PIL import Image

    pil_output = processor([Image.fromarray(frame) for frame in frames], num_frames=5)
    torch.testing.assert_close(array_output["pixel_values_videos"], tensor_output["pixel_values_videos"])
    torch.testing.assert_close(array_output["pixel_values_videos"], pil_output["pixel_values_videos"])
    with pytest.raises(ValueError, match="frame rate of this video is unknown"):
        processor(frames, fps=2)
    output = processor(frames, fps=2, video_metadata={"total_num_frames": 20, "fps": 10}, return_metadata=True)
    assert output["video_metadata"][0].frames_indices == [0, 6, 13, 19]  # 2 s at 2 fps, spread uniformly


def test_file_and_its_decoded_frames_give_the_same_pixels(videos):
    processor = StormVideoProcessor()
    reference, _ = decode_all(videos["h264.mp4"])
    from_file = processor(str(videos["h264.mp4"]), num_frames=4)["pixel_values_videos"]
    from_frames = processor(reference, num_frames=4)["pixel_values_videos"]
    torch.testing.assert_close(from_file, from_frames, rtol=0, atol=0)


def test_rescale_and_normalise_match_the_paper():
    frames = np.full((2, 30, 40, 3), [0, 51, 255], dtype=np.uint8)  # constant colours survive the resize
    pixel_values = StormVideoProcessor()(frames, num_frames=2)["pixel_values_videos"]
    expected = (torch.tensor([0, 51, 255]) / 255 - 0.5) / 0.5
    torch.testing.assert_close(pixel_values[0, :, :, 200, 200], expected.expand(2, 3), rtol=0, atol=1e-5)


def test_videos_of_different_lengths_are_zero_padded(videos):
    output = StormVideoProcessor()([str(videos["h264.mp4"]), make_frames(10)], num_frames=None, do_sample_frames=False)
    assert output["video_num_frames"].tolist() == [30, 10]
    assert output["pixel_values_videos"].shape == (2, 30, 3, 448, 448)
    assert output["pixel_values_videos"][1, 10:].abs().sum() == 0
    unpadded = StormVideoProcessor()(make_frames(10), do_sample_frames=False)["pixel_values_videos"]
    torch.testing.assert_close(output["pixel_values_videos"][1, :10], unpadded[0])


def test_save_and_load(tmp_path):
    from transformers import AutoVideoProcessor

    processor = StormVideoProcessor(num_frames=16, max_frames=64)
    processor.save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, StormVideoProcessor)
    assert loaded.to_dict() == processor.to_dict()


# Bad input: each error names the input and says what to do.


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4.*does not exist"):
        StormVideoProcessor()(str(tmp_path / "missing.mp4"))


def test_file_that_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 50)
    with pytest.raises(VideoDecodingError, match="notes.mp4.*could not be opened as a video"):
        StormVideoProcessor()(str(path), num_frames=2)


@pytest.mark.parametrize("name", ["h264.mp4", "vp9.webm"])
def test_truncated_video(videos, tmp_path, name):
    data = videos[name].read_bytes()
    path = tmp_path / f"truncated_{name}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodingError, match=f"truncated_{name}.*(truncated|could not be opened)"):
        StormVideoProcessor()(str(path), num_frames=NUM_FRAMES)


def test_corrupt_video(videos, tmp_path):
    data = bytearray(videos["h264.mp4"].read_bytes())
    data[48:] = np.random.default_rng(0).integers(0, 256, len(data) - 48, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoDecodingError, match="corrupt.mp4"):
        StormVideoProcessor()(str(path), num_frames=4)


def test_zero_frame_video(tmp_path):
    path = write_video(tmp_path / "empty.mp4", np.zeros((0, 48, 64, 3), dtype=np.uint8))
    with pytest.raises(VideoDecodingError, match="empty.mp4' contains no video frames"):
        StormVideoProcessor()(str(path), num_frames=1)


def test_fewer_frames_than_requested(videos):
    with pytest.raises(ValueError, match="num_frames=64 but the video has only 30 frames"):
        StormVideoProcessor()(str(videos["h264.mp4"]), num_frames=64)


def test_image_passed_as_video(tmp_path):
    path = write_image(tmp_path / "photo.png")
    with pytest.raises(VideoDecodingError, match="photo.png.*is an image"):
        StormVideoProcessor()(str(path), num_frames=1)
    with pytest.raises(ValueError, match="where a video was expected.*images="):
        StormVideoProcessor()(make_frames(1)[0])
