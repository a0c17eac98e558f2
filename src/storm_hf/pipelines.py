"""The `video-text-to-text` pipeline task (transformers has none): a video and a question, or a chat, in; text out."""

import torch
from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

from .processing.video_processing_storm import make_list_of_videos


class VideoTextToTextPipeline(ImageTextToTextPipeline):
    """Generate text about videos with a STORM (or any chat video-language) model.

    Inputs: `pipe(video, text="question")`, `pipe([video, ...], text=["question", ...])` (a video is a path, bytes, a
    file object, a (num_frames, height, width, 3) array or a list of frames), or chats with `{"type": "video", ...}`
    and `{"type": "image", ...}` entries (`"path"`, `"url"` or the object): `pipe(text=chat)` /
    `pipe(text=[chat, ...])`; chats with images, videos or both batch together (`batch_size`). Processor arguments
    such as `num_frames`, `fps`, `temporal_sampling_stride` or `max_visual_tokens` go in `processor_kwargs={...}`;
    generation arguments as for `image-text-to-text`.

    Example:

    ```python
    >>> import storm_hf
    >>> from transformers import pipeline
    >>> pipe = pipeline("video-text-to-text", model="path/to/storm")
    >>> pipe("video.mp4", text="What happens?", processor_kwargs={"max_visual_tokens": 8192}, max_new_tokens=64)
    ```
    """

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

    def preprocess(self, inputs=None, timeout=None, continue_final_message=None, **processing_kwargs):
        model_inputs = super().preprocess(inputs, timeout, continue_final_message, **processing_kwargs)
        # One entry per sample that batching (`batch_size > 1`) passes through as a list: samples with images, videos,
        # both or neither then share the same keys, and `_forward` pads them into one batch-major set.
        model_inputs[VISUAL_INPUTS] = {
            name: model_inputs.pop(name) for name in VISUAL_INPUT_NAMES if name in model_inputs
        }
        return model_inputs

    # `preprocess`, `_forward` and `postprocess` are the methods transformers documents for custom pipelines.
    def _forward(self, model_inputs, generate_kwargs=None):
        visual_inputs = model_inputs.pop(VISUAL_INPUTS)
        model_inputs.update(batch_visual_inputs(visual_inputs if isinstance(visual_inputs, list) else [visual_inputs]))
        return super()._forward(model_inputs, generate_kwargs)


VISUAL_INPUTS = "visual_inputs"
VISUAL_INPUT_NAMES = (
    "pixel_values_videos",
    "video_num_frames",
    "temporal_sampling_stride",
    "pixel_values",
    "num_images",
)


def batch_visual_inputs(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The visual inputs of single samples (each as the processor returns them for a batch of one; a sample may lack
    videos or images) as one batch-major set: frames, video slots and images zero-padded at the end, strides of 1 and
    image counts of 0 for samples without videos or images."""
    batched = {}
    if any("pixel_values_videos" in sample for sample in samples):
        batched["pixel_values_videos"] = _pad_rows([sample.get("pixel_values_videos") for sample in samples])
        batched["video_num_frames"] = _pad_rows([sample.get("video_num_frames") for sample in samples])
        one = torch.ones(1, dtype=torch.long)
        batched["temporal_sampling_stride"] = torch.cat(
            [sample.get("temporal_sampling_stride", one) for sample in samples]
        )
    if any("pixel_values" in sample for sample in samples):
        batched["pixel_values"] = _pad_rows([sample.get("pixel_values") for sample in samples])
        zero = torch.zeros(1, dtype=torch.long)
        batched["num_images"] = torch.cat([sample.get("num_images", zero) for sample in samples])
    return batched


def _pad_rows(rows: list[torch.Tensor | None]) -> torch.Tensor:
    """(1, length_i, ...) tensors (None: length 0) -> (len(rows), max length, ...), zero-padded at the end."""
    template = next(row for row in rows if row is not None)
    padded = template.new_zeros((len(rows), max(row.shape[1] for row in rows if row is not None), *template.shape[2:]))
    for index, row in enumerate(rows):
        if row is not None:
            padded[index, : row.shape[1]] = row[0]
    return padded
