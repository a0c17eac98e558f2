"""Frame order from the file to the model's input: every frame carries its index as a pattern that survives lossy
H.264 and resizing, and the frames the processor outputs are read back to indices, against an independent decode
(PyAV directly) and the paper's uniform sampling rule `round(linspace(0, total - 1, num_frames))`."""

import numpy as np
import pytest
import torch
from media import decode_all, make_processor, write_video


pytest.importorskip("av")

BITS = 4  # a BITS x BITS grid of black/white blocks: the frame index in binary, bit 0 top left, row by row
BLOCK = 14  # pixels per block side: 56 px frames, the test processor's size (no resize: pixels compare exactly)
TOTAL_FRAMES = 40
NUM_FRAMES = 8


def indexed_frames(num_frames: int) -> np.ndarray:
    """`(num_frames, BITS * BLOCK, BITS * BLOCK, 3)` uint8: frame i shows i in binary, white (1) / black (0) blocks."""
    bits = (np.arange(num_frames)[:, None] >> np.arange(BITS * BITS)) & 1
    blocks = bits.reshape(num_frames, BITS, BITS).astype(np.uint8) * 255
    frames = blocks.repeat(BLOCK, axis=1).repeat(BLOCK, axis=2)
    return np.repeat(frames[..., None], 3, axis=-1)


def read_indices(frames: np.ndarray) -> list[int]:
    """The index pattern of each `(num_frames, height, width)` brightness frame in [0, 1] (any size): the block
    centres' brightness, thresholded at one half."""
    height, width = frames.shape[1:3]
    centres_y = ((np.arange(BITS) + 0.5) * height / BITS).astype(int)
    centres_x = ((np.arange(BITS) + 0.5) * width / BITS).astype(int)
    bits = frames[:, centres_y][:, :, centres_x] > 0.5
    return [int((frame.reshape(-1) * (1 << np.arange(BITS * BITS))).sum()) for frame in bits]


def processed_indices(pixel_values: torch.Tensor) -> list[int]:
    """Indices of the frames of a processor's `(num_frames, 3, H, W)` pixels (normalised with mean = std = 0.5)."""
    brightness = (pixel_values.mean(1) * 0.5 + 0.5).numpy()
    return read_indices(brightness)


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("order") / "indexed.mp4", indexed_frames(TOTAL_FRAMES))


UNIFORM = np.round(np.linspace(0, TOTAL_FRAMES - 1, NUM_FRAMES)).astype(int).tolist()


def test_the_index_pattern_survives_encoding_as_pyav_decodes_it(indexed_video):
    decoded, _ = decode_all(indexed_video)
    assert read_indices(decoded.mean(-1) / 255) == list(range(TOTAL_FRAMES))
    assert read_indices(indexed_frames(TOTAL_FRAMES).mean(-1) / 255) == list(range(TOTAL_FRAMES))


def test_the_video_processor_keeps_the_order_of_a_file(indexed_video):
    processor = make_processor(num_frames=NUM_FRAMES).video_processor
    output = processor(str(indexed_video), return_metadata=True)
    pixels = output["pixel_values_videos"][0]
    assert processed_indices(pixels) == UNIFORM == output["video_metadata"][0].frames_indices
    # the same pixels as PyAV's own frames at those indices, processed without sampling
    decoded, _ = decode_all(indexed_video)
    expected = processor(decoded[UNIFORM], do_sample_frames=False)["pixel_values_videos"][0]
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_the_video_processor_keeps_the_order_of_decoded_frames(as_tensor):
    frames = indexed_frames(TOTAL_FRAMES).repeat(2, axis=1).repeat(2, axis=2)  # 112 px: resized to 56
    video = torch.from_numpy(frames).permute(0, 3, 1, 2) if as_tensor else frames
    processor = make_processor(num_frames=NUM_FRAMES).video_processor
    assert processed_indices(processor(video)["pixel_values_videos"][0]) == UNIFORM
    all_frames = processor(video, do_sample_frames=False)["pixel_values_videos"][0]
    assert processed_indices(all_frames) == list(range(TOTAL_FRAMES))


def test_a_chat_sends_the_frames_in_order_and_each_video_in_prompt_order(indexed_video):
    """Two videos in one chat (the file, then the frames reversed): `pixel_values_videos` holds each one's frames in
    its own order, the first video's first."""
    processor = make_processor(num_frames=NUM_FRAMES)
    reversed_frames = indexed_frames(TOTAL_FRAMES)[::-1].copy()
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": str(indexed_video)},
                {"type": "video", "video": reversed_frames},
                {"type": "text", "text": "Which is played backwards?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["video_num_frames"].tolist() == [[NUM_FRAMES, NUM_FRAMES]]
    indices = processed_indices(inputs["pixel_values_videos"][0])
    assert indices[:NUM_FRAMES] == UNIFORM
    assert indices[NUM_FRAMES:] == [TOTAL_FRAMES - 1 - index for index in UNIFORM]
