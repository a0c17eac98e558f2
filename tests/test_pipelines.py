"""`video-text-to-text` (registered by storm_hf) and the stock `image-text-to-text` pipeline with a tiny STORM model."""

import threading

import pytest
import torch
from media import make_frames, make_processor, write_video
from modeling_utils import tiny_config
from PIL import Image
from transformers import TextIteratorStreamer, pipeline

from storm_hf import StormForConditionalGeneration
from storm_hf.pipelines import VISUAL_INPUTS


MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def processor():
    return make_processor(num_frames=4, temporal_pool_size=2)


@pytest.fixture(scope="module")
def model(processor):
    tokenizer = processor.tokenizer
    config = tiny_config(image_token_id=processor.image_token_id, video_token_id=processor.video_token_id)
    config.text_config.vocab_size = len(tokenizer)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    return StormForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def pipe(model, processor):
    return pipeline("video-text-to-text", model=model, processor=processor)


def video_chat(*videos, question="What happens?"):
    content = [{"type": "video", "video": video} for video in videos] + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def reference_answer(model, processor, chat, **processor_kwargs):
    """Processor + `generate` + decode by hand: what every pipeline call must return."""
    inputs = processor.apply_chat_template(
        chat,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs,
    )
    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def answer(outputs):
    return outputs[0]["generated_text"]


def assert_both_pipelines_answer_like_the_reference(pipe, model, processor, frames, settings):
    """`video-text-to-text` (frames + question) and the stock `image-text-to-text` (a chat) with `processor_kwargs`
    answer as processor + `generate` do with the same settings."""
    expected = reference_answer(model, processor, video_chat(frames), **settings)
    output = pipe(
        frames, text="What happens?", processor_kwargs=settings, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False
    )
    assert answer(output) == expected
    stock = pipeline("image-text-to-text", model=model, processor=processor)
    output = stock(
        text=video_chat(frames), processor_kwargs=settings, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False
    )
    assert answer(output) == expected


def test_video_and_question_as_path_array_and_chat(pipe, model, processor, tmp_path):
    frames = make_frames(12)
    path = str(write_video(tmp_path / "clip.mp4", frames))
    for video in (path, frames):
        expected = reference_answer(model, processor, video_chat(video))
        assert (
            answer(pipe(video, text="What happens?", max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)) == expected
        )
        chat_output = pipe(text=video_chat(video), max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
        assert answer(chat_output) == expected


def test_stride_and_frames_chosen_per_call(pipe, model, processor):
    frames = make_frames(16)
    settings = {"num_frames": 8, "temporal_sampling_stride": 2}
    assert_both_pipelines_answer_like_the_reference(pipe, model, processor, frames, settings)


def test_single_and_batched_calls_answer_like_the_reference(pipe, model, processor):
    chats = [
        video_chat(make_frames(12, seed=1)),
        video_chat(make_frames(8, seed=2), make_frames(8, seed=3), question="Which is longer?"),
        video_chat(make_frames(20, seed=4), question="Colours?"),
    ]
    settings = {
        "processor_kwargs": {"do_sample_frames": False},
        "max_new_tokens": MAX_NEW_TOKENS,
        "return_full_text": False,
    }
    expected = [reference_answer(model, processor, chat, do_sample_frames=False) for chat in chats]
    single = [answer(pipe(text=chat, **settings)) for chat in chats]
    batched = [answer(output) for output in pipe(text=chats, batch_size=3, **settings)]
    assert len(set(expected)) == len(chats)  # distinct answers: a batch that mixed up its chats would show
    assert single == expected
    assert batched == expected


def test_stock_image_text_to_text_pipeline_takes_video_chats(model, processor, pipe):
    stock = pipeline("image-text-to-text", model=model, processor=processor)
    chat = video_chat(make_frames(12))
    expected = reference_answer(model, processor, chat)
    assert answer(stock(text=chat, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)) == expected
    assert answer(pipe(text=chat, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)) == expected


def test_token_streaming(pipe, processor):
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    chat = video_chat(make_frames(12))
    kwargs = {"text": chat, "max_new_tokens": MAX_NEW_TOKENS, "return_full_text": False}
    thread = threading.Thread(target=pipe, kwargs={**kwargs, "generate_kwargs": {"streamer": streamer}})
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == answer(pipe(**kwargs))


def test_processor_and_model_disagreeing_raises(model):
    mismatched = make_processor(num_frames=4, temporal_pool_size=1)  # the model pools 2 frames into 1
    inputs = mismatched.apply_chat_template(
        video_chat(make_frames(8)), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with pytest.raises(ValueError, match="16 video placeholder tokens .* but the video inputs produce 8 tokens"):
        model(**inputs)


def test_question_count_must_match_videos(pipe):
    with pytest.raises(ValueError, match="2 video\\(s\\) and 1 question"):
        pipe([make_frames(4), make_frames(4)], text=["Only one?"])


def image_chat(path, question="What colour?"):
    return [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": question}]}]


def test_image_chats_by_path_in_both_pipelines(pipe, model, processor, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(make_frames(1)[0]).save(path)
    expected = reference_answer(model, processor, image_chat(path))
    stock = pipeline("image-text-to-text", model=model, processor=processor)
    for runner in (pipe, stock):
        assert answer(runner(text=image_chat(path), max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)) == expected


def test_batch_mixing_image_only_video_and_text_only_chats_answers_like_the_reference(pipe, model, processor, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(make_frames(1, seed=5)[0]).save(path)
    both = [{"role": "user", "content": [*image_chat(path)[0]["content"], {"type": "video", "video": make_frames(8)}]}]
    chats = [
        image_chat(path),
        video_chat(make_frames(12, seed=1), make_frames(6, seed=2)),
        both,
        [{"role": "user", "content": "Text only."}],
    ]
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "return_full_text": False}
    expected = [reference_answer(model, processor, chat) for chat in chats]
    assert len(set(expected)) > 2  # different answers: a batch that mixed up its chats would show
    assert [answer(pipe(text=chat, **settings)) for chat in chats] == expected
    for batch_size in (2, 4):
        assert [answer(output) for output in pipe(text=chats, batch_size=batch_size, **settings)] == expected


def test_max_visual_tokens_through_the_pipeline(pipe, model, processor):
    from transformers.utils.chat_template_utils import Chat

    frames = make_frames(40)
    settings = {"max_visual_tokens": 16}  # 4 pooled frames of 2x2 tokens: 8 frames (the processor's default is 4)
    prepared = pipe.preprocess(Chat(video_chat(frames)), processor_kwargs=settings)
    assert prepared[VISUAL_INPUTS]["video_num_frames"].tolist() == [[8]]
    assert_both_pipelines_answer_like_the_reference(pipe, model, processor, frames, settings)


def test_the_task_accepts_models_registered_for_image_text_to_text_and_flags_others(model, processor):
    """The model check of `ImageTextToTextPipeline` (which the task inherits) counts the models registered with
    `AutoModelForImageTextToText` (STORM), and logs an error for a model outside the mapping."""
    from transformers.pipelines.base import logger
    from transformers.testing_utils import CaptureLogger

    with CaptureLogger(logger) as captured:
        pipeline("video-text-to-text", model=model, processor=processor)
    assert "not supported" not in captured.out
    with CaptureLogger(logger) as captured:
        pipeline("video-text-to-text", model=model.model.language_model, processor=processor)
    assert "The model 'Qwen2Model' is not supported for video-text-to-text" in captured.out
