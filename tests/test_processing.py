"""StormProcessor: chat template, placeholder expansion (counted by `num_visual_tokens`), batch-major inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from media import make_frames, make_processor, write_video
from PIL import Image

from storm_hf.processing import StormProcessor, StormVideoProcessor, VideoIntakePolicy, num_visual_tokens


def tokens_per_video(num_frames, stride=1, image_size=56, temporal_pool_size=2):
    return num_visual_tokens(
        num_frames,
        image_size,
        image_size,
        patch_size=14,
        temporal_pool_size=temporal_pool_size,
        temporal_sampling_stride=stride,
    )


def video_chat(*videos, question="What happens?", answer=None):
    content = [{"type": "video", "video": video} for video in videos] + [{"type": "text", "text": question}]
    chat = [{"role": "user", "content": content}]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def test_chat_template_is_chatml_with_vision_placeholders(processor):
    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": "They match."},
        {"role": "user", "content": "Sure?"},
    ]
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
        "Compare.<|im_end|>\n"
        "<|im_start|>assistant\nThey match.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_placeholders_expand_to_the_model_token_count(processor):
    for stride in (1, 2):
        output = processor(
            text="<|vision_start|><|video_pad|><|vision_end|>Hi",
            videos=make_frames(10),
            temporal_sampling_stride=stride,
        )
        num_tokens = (torch.tensor(output["input_ids"]) == processor.video_token_id).sum().item()
        assert num_tokens == tokens_per_video(4, stride)  # 4 sampled frames (the processor's num_frames)
        assert output["temporal_sampling_stride"].tolist() == [stride]


def test_batch_of_chats_with_different_videos_is_batch_major(processor):
    short, long, other = make_frames(6, seed=1), make_frames(12, seed=2), make_frames(9, seed=3)
    chats = [video_chat(short), video_chat(long, other), [{"role": "user", "content": "Text only."}]]
    output = processor.apply_chat_template(
        chats,
        tokenize=True,
        return_dict=True,
        padding=True,
        return_tensors="pt",
        processor_kwargs={"do_sample_frames": False},
    )
    assert output["video_num_frames"].tolist() == [[6, 0], [12, 9], [0, 0]]
    assert output["pixel_values_videos"].shape == (3, 21, 3, 56, 56)
    videos = StormVideoProcessor(size={"height": 56, "width": 56})
    expected = [videos(video, do_sample_frames=False)["pixel_values_videos"][0] for video in (short, long, other)]
    torch.testing.assert_close(output["pixel_values_videos"][0, :6], expected[0])
    torch.testing.assert_close(output["pixel_values_videos"][1], torch.cat(expected[1:]))
    assert output["pixel_values_videos"][0, 6:].abs().sum() == 0 and output["pixel_values_videos"][2].abs().sum() == 0
    placeholders = (output["input_ids"] == processor.video_token_id).sum(-1).tolist()
    assert placeholders == [tokens_per_video(6), tokens_per_video(12) + tokens_per_video(9), 0]
    assert output["temporal_sampling_stride"].tolist() == [1, 1, 1]


def test_text_only_image_and_mixed_inputs(processor):
    text_only = processor(text="Hello there")
    assert set(text_only) == {"input_ids", "attention_mask"}
    image = Image.fromarray(make_frames(1)[0])
    with_image = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}],
        tokenize=True,
        return_dict=True,
    )
    assert set(with_image) == {"input_ids", "attention_mask", "pixel_values", "num_images"}
    assert with_image["pixel_values"].shape == (1, 1, 3, 56, 56) and with_image["num_images"].tolist() == [1]
    mixed = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "video", "video": make_frames(8)},
                    {"type": "image", "image": image},
                    {"type": "text", "text": "Compare."},
                ],
            }
        ],
        tokenize=True,
        return_dict=True,
    )
    ids = torch.as_tensor(mixed["input_ids"])
    assert (ids == processor.image_token_id).sum() == 2 * num_visual_tokens(1, 56, 56, patch_size=14)
    assert (ids == processor.video_token_id).sum() == tokens_per_video(4)
    assert mixed["num_images"].tolist() == [2] and mixed["video_num_frames"].tolist() == [[4]]


def test_assistant_mask_covers_answers_after_expanded_placeholders(processor):
    chat = video_chat(make_frames(8), answer="the cat")
    chat += [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "in the hat"}]
    output = processor.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    mask = output["assistant_masks"][0].bool()
    ids = output["input_ids"][0]
    assert processor.tokenizer.decode(ids[mask]) == "the cat<|im_end|>in the hat<|im_end|>"
    assert (ids == processor.video_token_id).sum() == tokens_per_video(4)


def test_video_files_in_a_chat(processor, tmp_path):
    path = write_video(tmp_path / "clip.webm", make_frames(20), codec="libvpx-vp9")
    output = processor.apply_chat_template(
        video_chat(str(path)), tokenize=True, return_dict=True, processor_kwargs={"fps": 2, "return_metadata": True}
    )
    assert output["video_num_frames"].tolist() == [[4]]  # 2 s at 2 fps
    assert output["video_metadata"][0].timestamps == pytest.approx([0.0, 0.6, 1.3, 1.9])


def test_placeholders_without_videos_and_videos_without_placeholders(processor):
    with pytest.raises(ValueError, match=r"1 <\|video_pad\|> placeholder\(s\).*but 0 video\(s\)"):
        processor(text="<|video_pad|> What?")
    with pytest.raises(ValueError, match=r"0 <\|video_pad\|> placeholder\(s\).*but 1 video\(s\).*apply_chat_template"):
        processor(text="What?", videos=make_frames(4))
    with pytest.raises(ValueError, match=r"per sample: \[1, 1\]\) but 1 image"):
        processor(text=["<|image_pad|>", "<|image_pad|>"], images=[Image.fromarray(make_frames(1)[0])])
    with pytest.raises(ValueError, match="needs `text`"):
        processor(videos=make_frames(4))


def test_control_tokens_in_user_text_are_placeholders_unless_sanitized(processor):
    """As in transformers' processors: a `<|video_pad|>` or `<|image_pad|>` typed in a message counts as a placeholder
    (here one too many: the call raises), unless `apply_chat_template(..., sanitize_control_tokens=True)` marks it as
    user text; then it is encoded as plain text and the prompt is the one without it plus that text."""
    video = make_frames(8)
    typed = "Is <|video_pad|> or <|image_pad|> a token?"
    with pytest.raises(ValueError, match=r"2 <\|video_pad\|> placeholder\(s\).*sanitize_control_tokens=True"):
        processor.apply_chat_template(video_chat(video, question=typed), tokenize=True, return_dict=True)
    sanitized = processor.apply_chat_template(
        video_chat(video, question=typed), tokenize=True, return_dict=True, sanitize_control_tokens=True
    )
    plain = processor.apply_chat_template(video_chat(video, question="Is"), tokenize=True, return_dict=True)
    ids, plain_ids = sanitized["input_ids"][0], plain["input_ids"][0]
    assert ids.count(processor.video_token_id) == plain_ids.count(processor.video_token_id) == tokens_per_video(4)
    assert processor.image_token_id not in ids
    torch.testing.assert_close(sanitized["pixel_values_videos"], plain["pixel_values_videos"])
    # Up to the question the prompts are the same tokens; the typed tokens come back as the text that was typed.
    start = plain_ids.index(processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")) + 1
    assert ids[:start] == plain_ids[:start]
    assert processor.tokenizer.decode(ids[start:]).startswith(typed)


def test_invalid_stride_raises(processor):
    with pytest.raises(ValueError, match="temporal_sampling_stride"):
        processor(text="<|video_pad|>", videos=make_frames(4), temporal_sampling_stride=0)


def test_save_and_load_with_auto_processor(tmp_path):
    from transformers import AutoProcessor

    processor = make_processor(temporal_sampling_stride=2, spatial_pool_size=2)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["video_processor"]
    assert {key: saved[key] for key in ("patch_size", "temporal_pool_size", "temporal_sampling_stride")} == {
        "patch_size": 14,
        "temporal_pool_size": 2,
        "temporal_sampling_stride": 2,
    }
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, StormProcessor) and isinstance(loaded.video_processor, StormVideoProcessor)
    chat = video_chat(make_frames(8))
    expected = processor.apply_chat_template(chat, tokenize=True, return_dict=True)
    actual = loaded.apply_chat_template(chat, tokenize=True, return_dict=True)
    assert actual["input_ids"] == expected["input_ids"]
    torch.testing.assert_close(actual["pixel_values_videos"], expected["pixel_values_videos"])


def test_remote_code_loads_without_the_package(tmp_path):
    make_processor().save_pretrained(tmp_path)
    script = (
        "import sys; sys.modules['storm_hf'] = None\n"  # importing storm_hf now fails
        "import numpy as np\n"
        "from transformers import AutoProcessor\n"
        f"processor = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "output = processor(text='<|video_pad|>', videos=np.zeros((6, 48, 64, 3), np.uint8))\n"
        "print(type(processor).__name__, type(processor.video_processor).__name__, "
        "output['video_num_frames'].tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["StormProcessor", "StormVideoProcessor", "[[4]]"]


# ---------------------------------------------------------------- max_visual_tokens

BUDGET = 64  # the tiny processor's frames are 2x2 = 4 tokens after pooling 2: 16 pooled frames


@pytest.fixture(scope="module")
def tiny_model(processor):
    from modeling_utils import tiny_config

    from storm_hf import StormForConditionalGeneration

    config = tiny_config(image_token_id=processor.image_token_id, video_token_id=processor.video_token_id)
    config.text_config.vocab_size = len(processor.tokenizer)
    torch.manual_seed(0)
    return StormForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 10 s clip at 10 fps and a 1-hour clip at 1 fps (16x16 px: an hour of frames encodes in seconds)."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "10s": write_video(folder / "10s.mp4", make_frames(100), fps=10),
        "1h": write_video(folder / "1h.mp4", make_frames(3600, 16, 16), fps=1, gop_size=250),
    }


@pytest.mark.parametrize(
    ("clip", "frames", "stride"),
    [
        ("10s", 32, 1),  # 16 pooled frames x 2 = 32 frames over 10 s: 3.2 per second, stride 1
        ("1h", 64, 2),  # 32 frames would be one per 112 s: twice the frames, every 2nd pooled frame kept
    ],
)
def test_max_visual_tokens_on_a_10_second_and_a_1_hour_clip(processor, tiny_model, clips, clip, frames, stride):
    inputs = processor.apply_chat_template(
        video_chat(str(clips[clip])),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"max_visual_tokens": BUDGET, "return_metadata": True},
    )
    metadata = inputs.pop("video_metadata")[0]
    placeholders = int((inputs["input_ids"] == processor.video_token_id).sum())
    # The choice is reported with the outputs, and it is the one worked out by hand.
    assert inputs["video_num_frames"].tolist() == [[frames]] and inputs["temporal_sampling_stride"].tolist() == [stride]
    assert placeholders == tokens_per_video(frames, stride) <= BUDGET
    assert (
        metadata.frames_indices == np.round(np.linspace(0, metadata.total_num_frames - 1, frames)).astype(int).tolist()
    )
    # The model produces exactly as many tokens as the processor wrote placeholders (its forward checks it too).
    features = tiny_model.get_video_features(
        inputs["pixel_values_videos"], inputs["video_num_frames"], inputs["temporal_sampling_stride"]
    )
    assert features.pooler_output[0].shape[0] == placeholders
    with torch.no_grad():
        tiny_model(**inputs)


def test_max_visual_tokens_is_shared_by_the_videos_of_a_sample(processor):
    long, short = make_frames(300, 8, 8, seed=1), make_frames(10, 8, 8, seed=2)
    output = processor(
        text=["<|video_pad|><|video_pad|>", "<|video_pad|>", "No video."],
        videos=[long, short, long],
        video_metadata=[{"fps": 1.0}] * 3,
        max_visual_tokens=BUDGET,
    )
    # Sample 0: 32 tokens each = 8 pooled frames = 16 frames of the long video, all 10 of the short one, stride 1
    # (one stride per sample). Sample 1: the whole budget; 32 frames in 300 s is sparse, so 64 frames at stride 2.
    assert output["video_num_frames"].tolist() == [[16, 10], [64, 0], [0, 0]]
    assert output["temporal_sampling_stride"].tolist() == [1, 2, 1]
    placeholders = [sample.count(processor.video_token_id) for sample in output["input_ids"]]
    assert placeholders == [tokens_per_video(16) + tokens_per_video(10), tokens_per_video(64, 2), 0]
    assert max(placeholders) <= BUDGET


def test_max_visual_tokens_errors(processor):
    with pytest.raises(ValueError, match=r"max_visual_tokens=3.*below the 4 tokens of a single pooled frame"):
        processor(text="<|video_pad|>", videos=make_frames(8), max_visual_tokens=3)
    with pytest.raises(ValueError, match="do not pass it with `num_frames`"):
        processor(text="<|video_pad|>", videos=make_frames(8), max_visual_tokens=BUDGET, num_frames=4)
    with pytest.raises(ValueError, match=r"give 32 LLM tokens, over `max_visual_tokens=16`"):
        processor(text="<|video_pad|>", videos=make_frames(16), max_visual_tokens=16, do_sample_frames=False)


# ---------------------------------------------------------------- input kinds


def test_images_by_path_and_url_in_call_and_chat(processor, tmp_path):
    import functools
    import http.server

    from http_servers import http_server

    path = tmp_path / "image.png"
    Image.fromarray(make_frames(1)[0]).save(path)
    expected = processor(text="<|image_pad|>", images=Image.open(path))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    loopback = VideoIntakePolicy(trusted_hosts=("127.0.0.1",))  # the intake policy refuses loopback URLs by default
    with http_server(handler) as server:
        url = f"{server.url}/image.png"
        for image in (str(path), url):
            output = processor(text="<|image_pad|>", images=image, intake_policy=loopback)
            torch.testing.assert_close(output["pixel_values"], expected["pixel_values"])
            assert output["input_ids"] == expected["input_ids"]
        for entry in ({"path": str(path)}, {"url": url}):
            chat = [{"role": "user", "content": [{"type": "image", **entry}, {"type": "text", "text": "What?"}]}]
            output = processor.apply_chat_template(
                chat, tokenize=True, return_dict=True, processor_kwargs={"intake_policy": loopback}
            )
            torch.testing.assert_close(output["pixel_values"], expected["pixel_values"])
            assert output["input_ids"][0].count(processor.image_token_id) == num_visual_tokens(1, 56, 56, patch_size=14)


def test_video_as_frame_paths_and_as_datasets_lists_equals_the_array(processor, tmp_path):
    frames = make_frames(6)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(str(tmp_path / f"frame{index}.png"))
        Image.fromarray(frame).save(paths[-1])
    settings = {"text": "<|video_pad|>", "do_sample_frames": False}
    expected = processor(videos=frames, **settings)
    for video in (paths, frames.tolist()):
        output = processor(videos=video, **settings)
        torch.testing.assert_close(output["pixel_values_videos"], expected["pixel_values_videos"])
        assert output["input_ids"] == expected["input_ids"]
    chat = video_chat(paths)
    output = processor.apply_chat_template(chat, tokenize=True, return_dict=True, processor_kwargs={"num_frames": 6})
    torch.testing.assert_close(output["pixel_values_videos"], expected["pixel_values_videos"])
    with pytest.raises(ValueError, match="0..255 pixel values"):
        processor(videos=(frames.astype(int) * 2).tolist(), **settings)


# ---------------------------------------------------------------- conventions


def test_per_call_settings_are_video_processor_kwargs_only(processor):
    import inspect
    import warnings

    from storm_hf.processing import StormVideoProcessorKwargs

    assert "temporal_sampling_stride" not in inspect.signature(StormProcessor.__init__).parameters
    assert {"temporal_sampling_stride", "max_visual_tokens"} <= set(StormVideoProcessorKwargs.__annotations__)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text="<|video_pad|>", videos=make_frames(8), temporal_sampling_stride=2)


def test_num_multimodal_tokens_match_the_processor(processor):
    image = Image.fromarray(make_frames(1, 30, 70)[0])
    output = processor(text="<|image_pad|>", images=image)
    counted = processor._get_num_multimodal_tokens(image_sizes=[(30, 70)], video_sizes=[(6, 48, 64), (5, 48, 64)])
    assert counted.num_image_tokens == [output["input_ids"][0].count(processor.image_token_id)]
    for stride in (1, 2):
        videos = [make_frames(6), make_frames(5)]
        output = processor(
            text="<|video_pad|><|video_pad|>", videos=videos, do_sample_frames=False, temporal_sampling_stride=stride
        )
        counted = processor._get_num_multimodal_tokens(
            video_sizes=[(6, 48, 64), (5, 48, 64)], temporal_sampling_stride=stride
        )
        assert sum(counted.num_video_tokens) == output["input_ids"][0].count(processor.video_token_id)
        assert counted.num_video_tokens == [tokens_per_video(6, stride), tokens_per_video(5, stride)]
