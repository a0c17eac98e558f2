"""Processor of STORM: chat template, placeholder expansion and batch-major visual inputs."""

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

from .token_budget import num_visual_tokens
from .video_processing_storm import make_list_of_videos, pad_videos


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
    temporal_sampling_stride: int


class StormProcessor(ProcessorMixin):
    r"""
    Processor of STORM: a Qwen2 tokenizer, a [`StormVideoProcessor`] and a SigLIP image processor.

    Each `<|video_pad|>` (`<|image_pad|>`) in the text stands for one video (image), in order, and is expanded to as many
    tokens as the model produces for it, counted by `num_visual_tokens` from the processed frames and the attributes
    below; the stride used is returned with the pixels, so processor and model count with the same numbers.

    Args:
        image_processor: SigLIP image processor (448x448, mean = std = 0.5).
        tokenizer: Qwen2 tokenizer with the `<|video_pad|>`, `<|image_pad|>`, `<|vision_start|>`, `<|vision_end|>`
            special tokens.
        video_processor ([`StormVideoProcessor`]): decodes, samples and normalises videos.
        chat_template (`str`, *optional*): defaults to ChatML with video/image placeholders (`CHAT_TEMPLATE`).
        patch_size (`int`, defaults to 14): patch size of the vision tower.
        downsample_ratio (`int`, defaults to 2): side of the pixel-shuffle window.
        temporal_pool_size (`int`, defaults to 4): frames averaged into one by the token compressor.
        spatial_pool_size (`int`, defaults to 1): side of the spatial average-pooling window.
        temporal_sampling_stride (`int`, defaults to 1): keep every n-th pooled frame (test time only); override per
            call with `processor(..., temporal_sampling_stride=2)`. Ignored for images.

    Returns (from `__call__`), batch-major so that `generate` can repeat samples:
        - `input_ids`, `attention_mask`: (batch, seq).
        - `pixel_values_videos`: float (batch, max_total_frames, 3, H, W), the frames of all videos of a sample back to
          back in prompt order, zero-padded at the end; `video_num_frames`: long (batch, max_videos_per_sample), 0 for
          an empty slot; `temporal_sampling_stride`: long (batch,). Only when there are videos.
        - `pixel_values`: float (batch, max_images_per_sample, 3, H, W), zero-padded; `num_images`: long (batch,).
          Only when there are images.
    """

    valid_processor_kwargs = StormProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template=None,
        patch_size: int = 14,
        downsample_ratio: int = 2,
        temporal_pool_size: int = 4,
        spatial_pool_size: int = 1,
        temporal_sampling_stride: int = 1,
        **kwargs,
    ):
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        if self.image_token_id == tokenizer.unk_token_id or self.video_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer must have the special tokens {self.image_token} and {self.video_token}.")
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.temporal_pool_size = temporal_pool_size
        self.spatial_pool_size = spatial_pool_size
        self.temporal_sampling_stride = temporal_sampling_stride
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template or CHAT_TEMPLATE)

    def num_tokens(self, num_frames: int, height: int, width: int, temporal_sampling_stride: int = 1) -> int:
        """LLM tokens of a video of `num_frames` frames (an image is 1 frame) of `height`x`width` processed pixels."""
        return num_visual_tokens(
            num_frames,
            height,
            width,
            patch_size=self.patch_size,
            downsample_ratio=self.downsample_ratio,
            temporal_pool_size=self.temporal_pool_size,
            spatial_pool_size=self.spatial_pool_size,
            temporal_sampling_stride=temporal_sampling_stride,
        )

    def __call__(self, images=None, text=None, videos=None, **kwargs) -> BatchFeature:
        """Expand the placeholders of `text` (a string or a batch of strings) and process `images` and `videos`.

        `images` and `videos` are flat (in placeholder order over the batch) or nested per sample. See the class
        docstring for the returned keys.
        """
        if text is None:
            raise ValueError(
                f"{type(self).__name__} needs `text` with one {self.video_token} per video and one {self.image_token} "
                "per image; `apply_chat_template` writes them for you."
            )
        texts = [text] if isinstance(text, str) else list(text)
        videos = make_list_of_videos(videos) if videos is not None else []
        images = make_flat_list_of_images(images) if images is not None else []
        videos_per_sample = self._count_placeholders(texts, self.video_token, len(videos), "video")
        images_per_sample = self._count_placeholders(texts, self.image_token, len(images), "image")

        merged = self._merge_kwargs(StormProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        return_mm_token_type_ids = text_kwargs.pop("return_mm_token_type_ids", merged["return_mm_token_type_ids"])
        return_offsets = text_kwargs.pop("return_text_replacement_offsets", merged["return_text_replacement_offsets"])

        data, video_replacements, image_replacements = {}, [], []
        if videos:
            stride = merged["temporal_sampling_stride"]
            processed = self.video_processor(videos, **{**merged["videos_kwargs"], "return_tensors": None})
            frames = processed["pixel_values_videos"]
            video_replacements = [self.video_token * self.num_tokens(len(v), *v.shape[-2:], stride) for v in frames]
            data.update(pad_videos(frames, videos_per_sample))
            data["temporal_sampling_stride"] = torch.full((len(texts),), stride, dtype=torch.long)
            if "video_metadata" in processed:
                data["video_metadata"] = processed["video_metadata"]
        if images:
            images_kwargs = {**merged["images_kwargs"], "return_tensors": "pt"}
            pixel_values = self.image_processor(images, **images_kwargs)["pixel_values"]
            image_replacements = [self.image_token * self.num_tokens(1, *image.shape[-2:]) for image in pixel_values]
            # An image is a one-frame video: the same padding gives (batch, max_images_per_sample, 3, H, W).
            data["pixel_values"] = pad_videos(list(pixel_values[:, None]), images_per_sample)["pixel_values_videos"]
            data["num_images"] = torch.tensor(images_per_sample, dtype=torch.long)

        texts, replacement_offsets = self.get_text_with_replacements(texts, image_replacements, video_replacements)
        text_inputs = self.tokenizer(texts, **text_kwargs, return_tensors=return_tensors)
        self._check_special_mm_tokens(texts, text_inputs, modalities=["image", "video"])
        if return_mm_token_type_ids:
            text_inputs["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
        if return_offsets:
            text_inputs["text_replacement_offsets"] = replacement_offsets
        return BatchFeature(
            {**text_inputs, **data}, tensor_type=return_tensors, skip_tensor_conversion=self.skip_tensor_conversion
        )

    def _count_placeholders(self, texts: list[str], token: str, num_inputs: int, kind: str) -> list[int]:
        """Placeholders per sample; raises unless there is exactly one input per placeholder."""
        counts = [sample.count(token) for sample in texts]
        if sum(counts) != num_inputs:
            raise ValueError(
                f"The text has {sum(counts)} {token} placeholder(s) (per sample: {counts}) but {num_inputs} {kind}(s) "
                f"were passed. Put one {token} in the text for each {kind}, in order (`apply_chat_template` does this "
                f'for {{"type": "{kind}"}} entries), or pass as many {kind}s as there are placeholders.'
            )
        return counts

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

