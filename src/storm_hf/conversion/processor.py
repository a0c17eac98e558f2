"""The processor and tokenizer that go with a converted or composed STORM checkpoint."""

from transformers import SiglipImageProcessor

from ..processing import StormProcessor, StormVideoProcessor
from ..processing.processing_storm import VISION_SPECIAL_TOKENS
from ..processing.token_budget import token_grid_settings
from .checkpoint_io import ConversionError


def add_vision_tokens(tokenizer) -> list[str]:
    """Adds the Qwen2-VL vision special tokens a tokenizer lacks (a text tokenizer has none) and returns them."""
    vocab = tokenizer.get_vocab()
    added = [token for token in VISION_SPECIAL_TOKENS if token not in vocab]
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    return added


def fit_embeddings_to_tokenizer(model, tokenizer, added: list[str]) -> list[str]:
    """Gives the vision special tokens `added` to `tokenizer` (`add_vision_tokens`) rows in the language model's
    input and output embeddings where their ids fall beyond them: the embeddings grow to the tokenizer's length, the
    new rows initialised from the mean of the old ones (transformers' `resize_token_embeddings(...,
    mean_resizing=True)`). Returns the report lines (none when nothing grew).

    Raises when a token the tokenizer already had is beyond the embeddings: that tokenizer is not the model's.
    """
    rows = model.get_input_embeddings().num_embeddings
    beyond = {
        token: index
        for token in VISION_SPECIAL_TOKENS
        if (index := tokenizer.convert_tokens_to_ids(token)) >= rows and token not in added
    }
    if beyond or len(tokenizer) - len(added) > rows:
        raise ConversionError(
            f"The language model's embedding has {rows} rows but the tokenizer has {len(tokenizer) - len(added)} "
            f"tokens of its own{f' (with {beyond})' if beyond else ''}; use the tokenizer that belongs to this "
            "language model."
        )
    if len(tokenizer) <= rows:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return [f"grew the language model's embeddings from {rows} to {len(tokenizer)} rows for {added} (mean-initialised)"]


def build_processor(tokenizer, config, num_frames: int = 32) -> StormProcessor:
    """StormProcessor for `config`: SigLIP pre-processing at the vision tower's resolution, `num_frames` frames by
    default; the video processor counts placeholders with the config's patch size, pixel-shuffle, pooling and
    default temporal-sampling stride."""
    size = {"height": config.vision_config.image_size, "width": config.vision_config.image_size}
    normalisation = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video_processor = StormVideoProcessor(
        size=size,
        num_frames=num_frames,
        temporal_sampling_stride=config.temporal_sampling_stride,
        **token_grid_settings(config),
        **normalisation,
    )
    return StormProcessor(
        image_processor=SiglipImageProcessor(size=size, resample=3, **normalisation),
        tokenizer=tokenizer,
        video_processor=video_processor,
    )
