"""The processor and tokenizer that go with a converted or composed STORM checkpoint."""

from transformers import SiglipImageProcessor

from ..processing import StormProcessor, StormVideoProcessor
from ..processing.processing_storm import VISION_SPECIAL_TOKENS
from .checkpoint_io import ConversionError


def add_vision_tokens(tokenizer, vocab_size: int) -> list[str]:
    """Adds the Qwen2-VL vision special tokens a tokenizer lacks (a Qwen2 text tokenizer has none) and returns them.

    Raises if the language model's embedding has no row for one of them.
    """
    vocab = tokenizer.get_vocab()
    added = [token for token in VISION_SPECIAL_TOKENS if token not in vocab]
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_SPECIAL_TOKENS}
    too_large = {token: index for token, index in ids.items() if index >= vocab_size}
    if too_large:
        raise ConversionError(
            f"The language model's embedding has {vocab_size} rows but the tokenizer puts {too_large} beyond them; use "
            "the tokenizer that belongs to this language model."
        )
    return added


def build_processor(tokenizer, config, num_frames: int = 32) -> StormProcessor:
    """StormProcessor for `config`: SigLIP pre-processing at the vision tower's resolution, `num_frames` frames by
    default; the video processor counts placeholders with the config's patch size, pixel-shuffle, pooling and
    default temporal-sampling stride."""
    size = {"height": config.vision_config.image_size, "width": config.vision_config.image_size}
    normalisation = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video_processor = StormVideoProcessor(
        size=size,
        num_frames=num_frames,
        patch_size=config.vision_config.patch_size,
        downsample_ratio=config.downsample_ratio,
        temporal_pool_size=config.temporal_pool_size,
        spatial_pool_size=config.spatial_pool_size,
        temporal_sampling_stride=config.temporal_sampling_stride,
        **normalisation,
    )
    return StormProcessor(
        image_processor=SiglipImageProcessor(size=size, resample=3, **normalisation),
        tokenizer=tokenizer,
        video_processor=video_processor,
    )
