"""The `video-text-to-text` pipeline task (transformers has none): a video and a question, or a chat, in; text out."""

import torch
from transformers import AutoModelForImageTextToText
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

from .processing.video_processing_storm import make_list_of_videos


class VideoTextToTextPipeline(ImageTextToTextPipeline):
    """Generate text about videos with a STORM (or any chat video-language) model.

    Inputs: `pipe(video, text="question")`, `pipe([video, ...], text=["question", ...])` (a video is a path, bytes, a
    file object, a (num_frames, height, width, 3) array or a list of frames), or chats with `{"type": "video", ...}`
    entries: `pipe(text=chat)` / `pipe(text=[chat, ...])`. Processor arguments such as `num_frames`, `fps` or
    `temporal_sampling_stride` go in `processor_kwargs={...}`; generation arguments as for `image-text-to-text`.

    Example:

    ```python
    >>> import storm_hf
    >>> from transformers import pipeline
    >>> pipe = pipeline("video-text-to-text", model="path/to/storm")
    >>> pipe("video.mp4", text="What happens?", processor_kwargs={"num_frames": 32}, max_new_tokens=64)
    ```
    """

    def __init__(self, *args, **kwargs):
        Pipeline.__init__(self, *args, **kwargs)
        # The image pipeline checks transformers' own models only; add those registered by packages (STORM).
        registered = [model.__name__ for model in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING._extra_content.values()]
        self.check_model_type([*MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values(), *registered])

    def __call__(self, videos=None, text=None, **kwargs):
        if videos is None or (isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], dict)):
            return super().__call__(text=text if videos is None else videos, **kwargs)
        if text is None:
            raise ValueError("Pass a question with the video(s): `pipe(video, text='What happens?')`, or pass a chat.")
        questions = [text] if isinstance(text, str) else list(text)
        videos = make_list_of_videos(videos)
        if len(videos) != len(questions):
            raise ValueError(
                f"Got {len(videos)} video(s) and {len(questions)} question(s); pass one question per video."
            )
        chats = [
            [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": question}]}]
            for video, question in zip(videos, questions)
        ]
        return super().__call__(text=chats[0] if isinstance(text, str) else chats, **kwargs)

    def _forward(self, model_inputs, generate_kwargs=None):
        if "video_num_frames" in model_inputs and self.processor.tokenizer.padding_side == "left":
            _move_left_padding_to_the_end(model_inputs)
        return super()._forward(model_inputs, generate_kwargs)


def _move_left_padding_to_the_end(model_inputs):
    """Batching (`batch_size > 1`) pads every tensor along dim 1 on the tokenizer's side. Frames and video slots must
    come first in each row, so move the zeros that left padding put in front of them to the end (in place)."""
    frames, num_frames = model_inputs["pixel_values_videos"], model_inputs["video_num_frames"]
    for row in range(len(num_frames)):
        padding_slots = int((num_frames[row] == 0).sum())
        padding_frames = frames.shape[1] - int(num_frames[row].sum())
        num_frames[row] = torch.roll(num_frames[row], -padding_slots)
        frames[row] = torch.roll(frames[row], -padding_frames, dims=0)


def register_pipelines():
    """Register the `video-text-to-text` task."""
    PIPELINE_REGISTRY.register_pipeline(
        "video-text-to-text",
        pipeline_class=VideoTextToTextPipeline,
        pt_model=AutoModelForImageTextToText,
        type="multimodal",
    )
