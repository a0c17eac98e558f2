"""Processor of STORM: chat template and placeholder expansion; the video processor counts the tokens."""

import itertools
import math
import re

import torch
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import _UNMARKED, MultiModalData, ProcessingKwargs, ProcessorMixin

from .video_intake import environment_policy, read_image_sources
from .video_processing_storm import StormVideoProcessorKwargs, make_list_of_videos, pad_videos


# Qwen2-VL's vision tokens, which the chat template below writes: each placeholder is wrapped in start/end tokens.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# ChatML (Qwen2-VL) with the default system prompt of the paper's LLM. Each image or video becomes one placeholder
# wrapped in vision start/end tokens; the processor expands the placeholder to the number of visual tokens. Assistant
# turns sit in a `{% generation %}` block so `return_assistant_tokens_mask=True` marks the tokens to train on.
CHAT_TEMPLATE = r"""{% for message in messages %}
{% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string %}
{% set text = message['content'] %}
{% else %}
{% set parts = namespace(text='') %}
{% for content in message['content'] %}
{% if content['type'] == 'image' %}
{% set parts.text = parts.text + '<|vision_start|><|image_pad|><|vision_end|>' %}
{% elif content['type'] == 'video' %}
{% set parts.text = parts.text + '<|vision_start|><|video_pad|><|vision_end|>' %}
{% elif content['type'] == 'text' %}
{% set parts.text = parts.text + content['text'] %}
{% endif %}
{% endfor %}
{% set text = parts.text %}
{% endif %}
{% if message['role'] == 'assistant' %}
{% generation %}{{ text }}<|im_end|>{% endgeneration %}{{ '\n' -}}
{% else %}
{{ text }}<|im_end|>
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""


class StormProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: StormVideoProcessorKwargs


# How a chat call chooses a video's frames, highest precedence first (`StormProcessor.apply_chat_template`).
CHAT_FRAME_SELECTION = ("max_visual_tokens", "fps", "num_frames")
# The video settings a chat server passes as keyword arguments of `apply_chat_template` (a request's
# `chat_template_kwargs`): gathered with `processor_kwargs` before the frame selection is resolved.
CHAT_VIDEO_SETTINGS = (
    *CHAT_FRAME_SELECTION,
    "min_frames",
    "max_frames",
    "temporal_sampling_stride",
    "do_sample_frames",
)


class StormProcessor(ProcessorMixin):
    r"""
    Processor of STORM: the language model's tokenizer, a [`StormVideoProcessor`] and a SigLIP image processor.

    Each `<|video_pad|>` (`<|image_pad|>`) in the text stands for one video (image), in order, and is replaced by as
    many placeholders as the model produces for it: the video processor returns each video's LLM token grid with its
    pixels (an image is counted as a one-frame video with the same settings), so processor and model count with the
    same numbers. Per-call settings go to the video processor as keyword arguments: `num_frames`, `fps`,
    `temporal_sampling_stride`, `max_visual_tokens` (see [`StormVideoProcessorKwargs`]), e.g.
    `processor(text, videos=..., max_visual_tokens=8192)` or
    `apply_chat_template(..., processor_kwargs={"max_visual_tokens": 8192})`.

    `max_visual_tokens` is a budget per sample (one prompt): its videos share it equally. The frames and stride
    chosen are in the outputs: `video_num_frames`, `temporal_sampling_stride` and the `<|video_pad|>` count of
    `input_ids`.

    Args:
        image_processor: SigLIP image processor (448x448, mean = std = 0.5).
        tokenizer: the language model's tokenizer with the `<|video_pad|>`, `<|image_pad|>`, `<|vision_start|>`,
            `<|vision_end|>` special tokens (`compose_storm` adds those it lacks).
        video_processor ([`StormVideoProcessor`]): decodes, samples and normalises videos; holds the model's patch
            size, pixel-shuffle and pooling sizes.
        chat_template (`str`, *optional*): defaults to ChatML with video/image placeholders (`CHAT_TEMPLATE`).

    Returns (from `__call__`), batch-major so that `generate` can repeat samples:
        - `input_ids`, `attention_mask`: (batch, seq).
        - `pixel_values_videos`: float (batch, max_total_frames, 3, H, W), the frames of all videos of a sample back to
          back in prompt order, zero-padded at the end; `video_num_frames`: long (batch, max_videos_per_sample), 0 for
          an empty slot; `temporal_sampling_stride`: long (batch,). Only when there are videos.
        - `pixel_values`: float (batch, max_images_per_sample, 3, H, W), zero-padded; `num_images`: long (batch,).
          Only when there are images.
        - `video_metadata`: with `return_metadata=True`, one metadata per video (frame indices and timestamps).
    """

    valid_processor_kwargs = StormProcessorKwargs

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, **kwargs):
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        if self.image_token_id == tokenizer.unk_token_id or self.video_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer must have the special tokens {self.image_token} and {self.video_token}.")
        super().__init__(
            image_processor, tokenizer, video_processor, chat_template=chat_template or CHAT_TEMPLATE, **kwargs
        )

    def apply_chat_template(
        self, conversation, chat_template=None, load_audio_from_video=False, processor_kwargs=None, **kwargs
    ):
        """`ProcessorMixin.apply_chat_template`, with a chat call's frame selection read as a chat server sends it.

        STORM takes no audio: `load_audio_from_video` (which `transformers serve` sets for every video) is ignored, and
        no audio track is ever decoded.

        The frame selection (keyword arguments or `processor_kwargs`; `transformers serve` passes a request's
        `chat_template_kwargs` here) goes by precedence, highest first; a higher setting replaces a lower one given in
        the same call, and `None` counts as not given:
            1. `max_visual_tokens`: the token budget picks the frames and the stride (a `temporal_sampling_stride`
               given with it fixes the stride);
            2. `fps`: frames per second of video, within `min_frames`/`max_frames`;
            3. `num_frames`: at most this many frames, spread uniformly; a video with fewer frames is read whole;
            4. none of them: the video processor's defaults, its `num_frames` read as in 3.
        So the `num_frames=32` that `transformers serve` adds to every video request gives way to a client's `fps` or
        `max_visual_tokens`, and answers a shorter video. Every frame, unbounded, is read only with
        `do_sample_frames=False` (or by a video processor whose defaults select no frame count).
        """
        settings = {
            **(processor_kwargs or {}),
            **{name: kwargs.pop(name) for name in CHAT_VIDEO_SETTINGS if name in kwargs},
        }
        return super().apply_chat_template(
            conversation, chat_template, processor_kwargs=self._chat_frame_selection(settings), **kwargs
        )

    def _chat_frame_selection(self, settings: dict) -> dict:
        """`settings` with the frame selection that wins (see `apply_chat_template`); a `num_frames` that wins becomes
        a ceiling (`max_frames`)."""
        given = {name: settings.pop(name, None) for name in CHAT_FRAME_SELECTION}
        if all(value is None for value in given.values()):  # the video processor's defaults, read the same way
            given = {name: getattr(self.video_processor, name) for name in CHAT_FRAME_SELECTION}
        winner = next((name for name in CHAT_FRAME_SELECTION if given[name] is not None), None)
        if winner is None:  # a video processor that keeps every frame by default
            return {**settings, **given}
        if winner != "num_frames":
            return {**settings, winner: given[winner]}
        ceiling = min(given["num_frames"], settings.get("max_frames") or given["num_frames"])
        return {**settings, **dict.fromkeys(CHAT_FRAME_SELECTION), "max_frames": ceiling}

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Load images given as paths or URLs, and group `images` and `videos` (flat in placeholder order over the
        batch, or nested per sample) per sample by the placeholders in each sample's text.

        As in transformers' processors, a `<|video_pad|>` or `<|image_pad|>` in the text is a placeholder, unless
        `apply_chat_template(..., sanitize_control_tokens=True)` marked it as user text: then it is encoded as plain
        text and stands for no input."""
        if text is None:
            raise ValueError(
                f"{type(self).__name__} needs `text` with one {self.video_token} per video and one {self.image_token} "
                "per image; `apply_chat_template` writes them for you."
            )
        # Image paths and URLs are read under the video intake policy (the same sources rules and budgets).
        policy = kwargs.get("intake_policy") or kwargs.get("videos_kwargs", {}).get("intake_policy")
        if images is not None:
            images = read_image_sources(images, policy or self.video_processor.intake_policy or environment_policy())
        images, text, videos, audio = super().prepare_inputs_layout(images, text, videos, audio, **kwargs)
        videos = make_list_of_videos(videos) if videos is not None else []
        images = make_flat_list_of_images(images) if images is not None else []
        # `_UNMARKED`: the look-behind with which ProcessorMixin expands and checks only the unmarked placeholders.
        videos_per_sample = [len(re.findall(_UNMARKED + re.escape(self.video_token), sample)) for sample in text]
        images_per_sample = [len(re.findall(_UNMARKED + re.escape(self.image_token), sample)) for sample in text]
        return (_split(images, images_per_sample), text, _split(videos, videos_per_sample), audio)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Raises unless the text has exactly one placeholder per video and per image. `images` and `videos` are
        grouped per sample (`prepare_inputs_layout`); `text` comes without the control tokens marked as user text."""
        for token, inputs, kind in ((self.video_token, videos, "video"), (self.image_token, images, "image")):
            counts = [sample.count(token) for sample in text]
            num_inputs = sum(len(sample) for sample in inputs)
            if sum(counts) != num_inputs:
                raise ValueError(
                    f"The total number of {token} tokens in the prompts should be the same as the number of {kind}s "
                    f"passed: the text has {sum(counts)} {token} placeholder(s) (per sample: {counts}) but "
                    f"{num_inputs} {kind}(s) were passed. Put one {token} in the text for each {kind}, in order "
                    f'(`apply_chat_template` does this for {{"type": "{kind}"}} entries), or pass as many {kind}s as '
                    f"there are placeholders. A {token} that is meant as text: `apply_chat_template(..., "
                    "sanitize_control_tokens=True)` encodes the control tokens in the messages as plain text."
                )

    # `_process_videos`/`_process_images` are ProcessorMixin's hooks for calling a sub-processor; transformers has no
    # public one. Its defaults count the placeholders over the raw inputs (`make_batched_videos`); STORM counts them
    # over what the sub-processor returned (the token grids), whatever form the inputs came in.
    def _process_videos(self, videos: list[list], **kwargs):
        """Videos grouped per sample -> batch-major video inputs, their token grids, and the placeholder strings."""
        if not any(videos):
            return {}, []
        processed = self.video_processor(videos, **{**kwargs, "return_tensors": "pt"})
        return processed, [
            self.replace_video_token(processed, index) for index in range(len(processed["video_token_grid"]))
        ]

    def _process_images(self, images: list[list], **kwargs):
        """Images grouped per sample -> `pixel_values` (batch, max_images, 3, H, W), `num_images`, placeholder
        strings."""
        flat = [image for sample in images for image in sample]
        if not flat:
            return {}, []
        pixel_values = self.image_processor(flat, **{**kwargs, "return_tensors": "pt"})["pixel_values"]
        grid = [self.video_processor.token_grid(1, *image.shape[-2:]) for image in pixel_values]
        # An image is a one-frame video: the same padding gives (batch, max_images_per_sample, 3, H, W).
        counts = [len(sample) for sample in images]
        processed = {
            "pixel_values": pad_videos(list(pixel_values[:, None]), counts)["pixel_values_videos"],
            "num_images": torch.tensor(counts, dtype=torch.long),
            "image_token_grid": torch.tensor(grid, dtype=torch.long),
        }
        return processed, [self.replace_image_token(processed, index) for index in range(len(flat))]

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return self.video_token * int(video_inputs["video_token_grid"][video_idx].prod())

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * int(image_inputs["image_token_grid"][image_idx].prod())

    # The hook serving engines (vLLM) call for placeholder counts; transformers has no public name for it.
    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder counts for images of (height, width) and videos of (num_frames, height, width) (frames as
        sampled; the processed frame size is the processors' `size` when they resize). `kwargs`: processor kwargs
        (e.g. `temporal_sampling_stride`)."""
        merged = self._merge_kwargs(self.valid_processor_kwargs, **kwargs)
        data = {}
        if image_sizes is not None:
            size = self._processed_size(self.image_processor, merged["images_kwargs"])
            tokens = [self._count(1, *(size or image_size)) for image_size in image_sizes]
            data.update(num_image_tokens=tokens, num_image_patches=[1] * len(image_sizes))
        if video_sizes is not None:
            videos_kwargs = merged["videos_kwargs"]
            size = self._processed_size(self.video_processor, videos_kwargs)
            stride = videos_kwargs.get("temporal_sampling_stride", self.video_processor.temporal_sampling_stride)
            data["num_video_tokens"] = [
                self._count(
                    frames, *(size or (height, width)), temporal_sampling_stride=1 if stride is None else stride
                )
                for frames, height, width in video_sizes
            ]
        return MultiModalData(**data)

    def _count(self, num_frames: int, height: int, width: int, temporal_sampling_stride: int = 1) -> int:
        return math.prod(self.video_processor.token_grid(num_frames, height, width, temporal_sampling_stride))

    @staticmethod
    def _processed_size(processor, kwargs: dict) -> tuple[int, int] | None:
        """(height, width) the processor resizes to, or None when it keeps the input size."""
        if not kwargs.get("do_resize", processor.do_resize):
            return None
        size = kwargs.get("size") or processor.size
        return size["height"], size["width"]

    @property
    def unused_input_names(self) -> list[str]:
        return ["video_token_grid", "image_token_grid"]

    @property
    def model_input_names(self) -> list[str]:
        return [
            *self.tokenizer.model_input_names,
            "pixel_values_videos",
            "video_num_frames",
            "temporal_sampling_stride",
            "pixel_values",
            "num_images",
        ]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        """Decode generated token ids (batch, seq) to strings."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


def _split(items: list, counts: list[int]) -> list[list]:
    """`items` (flat, in placeholder order) as one list per sample holding `counts[i]` of them; the last sample also
    holds any items beyond the placeholders, so that `validate_inputs` counts every input."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [items[start:end] for start, end in itertools.pairwise([*starts, None])]
