"""How many LLM tokens a video or an image becomes: the one place that counts them.

The processor expands placeholders with `num_visual_tokens`; the model produces exactly that many tokens
(checked against the placeholder mask at every forward), and `tests/test_token_budget.py` holds the two together.
"""

import math


def merged_grid_size(image_size: int, patch_size: int, downsample_ratio: int) -> int:
    """Side of the token grid after patchifying and `downsample_ratio`x`downsample_ratio` pixel-shuffle.

    An odd patch grid is zero-padded before the shuffle (as in NVILA), hence the ceiling.
    """
    return math.ceil((image_size // patch_size) / downsample_ratio)


def num_visual_tokens(
    num_frames: int,
    height: int,
    width: int,
    *,
    patch_size: int,
    downsample_ratio: int = 2,
    temporal_pool_size: int = 1,
    spatial_pool_size: int = 1,
    temporal_sampling_stride: int = 1,
) -> int:
    """Number of LLM tokens for `num_frames` frames of `height`x`width` pixels (an image is one frame).

    Order of operations, as in the model: patchify -> pixel-shuffle -> Mamba (keeps the count) ->
    temporal pooling (average of `temporal_pool_size` consecutive frames, a shorter last group included)
    -> spatial pooling (`spatial_pool_size`x`spatial_pool_size` average) -> temporal sampling (every
    `temporal_sampling_stride`-th pooled frame, starting with the first).
    """
    for name, value in (
        ("num_frames", num_frames),
        ("patch_size", patch_size),
        ("downsample_ratio", downsample_ratio),
        ("temporal_pool_size", temporal_pool_size),
        ("spatial_pool_size", spatial_pool_size),
        ("temporal_sampling_stride", temporal_sampling_stride),
    ):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}.")
    grid_height = merged_grid_size(height, patch_size, downsample_ratio)
    grid_width = merged_grid_size(width, patch_size, downsample_ratio)
    if grid_height % spatial_pool_size or grid_width % spatial_pool_size:
        raise ValueError(
            f"`spatial_pool_size={spatial_pool_size}` does not divide the {grid_height}x{grid_width} token grid of "
            f"{height}x{width} frames (patch {patch_size}, pixel-shuffle {downsample_ratio}); pick a divisor of both sides."
        )
    pooled_frames = math.ceil(num_frames / temporal_pool_size)
    kept_frames = math.ceil(pooled_frames / temporal_sampling_stride)
    return kept_frames * (grid_height // spatial_pool_size) * (grid_width // spatial_pool_size)
