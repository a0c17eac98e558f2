"""How many LLM tokens a video or an image becomes, and how many frames fit a token budget: STORM's token compression
as arithmetic.

The settings the count depends on are defined here once (`TokenGridSettings`, `COMPRESSION_SETTINGS`): the model's
config holds them (and validates them); `token_grid_settings` reads them from it for the video processor
(`build_processor`, which passes them as keyword arguments) and for `storm_hf.accounting`. The processor expands
placeholders with `visual_token_grid` (`num_visual_tokens` is its product); the model's token compressor produces
exactly that many tokens (checked against the placeholder mask at every forward). `frames_within_budget` is the policy
that turns a `max_visual_tokens` budget into a frame count and a temporal-sampling stride.
"""

import math
from typing import NamedTuple, TypedDict


class TokenGridSettings(TypedDict, total=False):
    r"""
    The model settings a frame's LLM token grid depends on. The model's config holds them; the video processor takes
    them as keyword arguments and keeps a copy (`build_processor` copies them from the config) to count placeholders.

    patch_size (`int`, defaults to 14):
        Side of the vision tower's patches.
    downsample_ratio (`int`, defaults to 2):
        Side of the pixel-shuffle window.
    temporal_pool_size (`int`, defaults to 4):
        Frames the token compressor averages into one (trained).
    spatial_pool_size (`int`, defaults to 1):
        Side of the token compressor's average-pooling window inside each frame (trained).
    """

    patch_size: int
    downsample_ratio: int
    temporal_pool_size: int
    spatial_pool_size: int


# The paper's model: SigLIP patch 14, 2x2 pixel-shuffle, T.Pool k=4 (the defaults of `StormConfig` too).
DEFAULT_TOKEN_GRID = TokenGridSettings(patch_size=14, downsample_ratio=2, temporal_pool_size=4, spatial_pool_size=1)
TOKEN_GRID_SETTINGS = tuple(TokenGridSettings.__annotations__)
# The token compressor's trained pooling sizes, and compression as a whole: the pooling sizes and the test-time
# temporal-sampling stride (all 1: no compression).
POOLING_SETTINGS = ("temporal_pool_size", "spatial_pool_size")
COMPRESSION_SETTINGS = (*POOLING_SETTINGS, "temporal_sampling_stride")

# Temporal sampling strides the budget policy chooses from: 1 (what STORM is trained with) and 2 (the test-time
# setting of the paper's T.Pool + T.Sampling results). Larger strides are not evaluated in the paper's tables.
BUDGET_STRIDES = (1, 2)
# Below this many sampled frames per second at stride 1, the policy doubles the frames and samples with stride 2.
MIN_FRAMES_PER_SECOND = 1.0


def token_grid_settings(config) -> dict[str, int]:
    """The `TOKEN_GRID_SETTINGS` of a `StormConfig` (the patch size is its vision tower's)."""
    return {"patch_size": config.vision_config.patch_size} | {
        name: getattr(config, name) for name in TOKEN_GRID_SETTINGS if name != "patch_size"
    }


def merged_grid_size(image_size: int, patch_size: int, downsample_ratio: int) -> int:
    """Side of the token grid after patchifying and `downsample_ratio`x`downsample_ratio` pixel-shuffle.

    An odd patch grid is zero-padded before the shuffle (as in NVILA), hence the ceiling.
    """
    return math.ceil((image_size // patch_size) / downsample_ratio)


def visual_token_grid(
    num_frames: int,
    height: int,
    width: int,
    *,
    patch_size: int,
    downsample_ratio: int = 2,
    temporal_pool_size: int = 1,
    spatial_pool_size: int = 1,
    temporal_sampling_stride: int = 1,
) -> tuple[int, int, int]:
    """(frames, rows, columns) of the LLM tokens of `num_frames` frames of `height`x`width` pixels (an image is one
    frame); the token count is their product.

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
            f"{height}x{width} frames (patch {patch_size}, pixel-shuffle {downsample_ratio}); "
            "pick a divisor of both sides."
        )
    pooled_frames = math.ceil(num_frames / temporal_pool_size)
    kept_frames = math.ceil(pooled_frames / temporal_sampling_stride)
    return (kept_frames, grid_height // spatial_pool_size, grid_width // spatial_pool_size)


def num_visual_tokens(num_frames: int, height: int, width: int, **settings: int) -> int:
    """Number of LLM tokens for `num_frames` frames of `height`x`width` pixels (an image is one frame): the product
    of `visual_token_grid` with the same keyword `settings` (`patch_size` is required)."""
    return math.prod(visual_token_grid(num_frames, height, width, **settings))


class FramePlan(NamedTuple):
    """Frames to sample from a video and the temporal-sampling stride to encode them with."""

    num_frames: int
    temporal_sampling_stride: int


def frames_within_budget(
    max_visual_tokens: int,
    *,
    total_frames: int,
    duration: float | None,
    tokens_per_frame: int,
    temporal_pool_size: int,
    temporal_sampling_stride: int | None = None,
    max_frames: int | None = None,
) -> FramePlan:
    """The most frames of a video whose LLM tokens fit `max_visual_tokens`, and the stride to encode them with.

    `tokens_per_frame` is the token count of one pooled frame (rows x columns of `visual_token_grid`). With stride `s`,
    `n` frames give `ceil(ceil(n / temporal_pool_size) / s) * tokens_per_frame` tokens, so the budget admits
    `n <= (max_visual_tokens // tokens_per_frame) * temporal_pool_size * s` frames, capped at the frames the video has
    (no frame is sampled twice) and at `max_frames`.

    The stride, unless given: 1 when all frames fit at stride 1, or when the frames that fit at stride 1 still cover
    the video with at least `MIN_FRAMES_PER_SECOND` (or its duration is unknown); 2 otherwise, with twice the frames.
    Sampling happens after the bidirectional Mamba, so each kept token has already mixed in the frames whose tokens
    are dropped: at the same LLM budget, 2x the frames with stride 2 see events that fall between the frames of
    stride 1 (the paper's T.Pool + T.Sampling on 256 frames against T.Pool on 128: MLVU 72.9 vs 72.5, LongVideoBench
    60.5 vs 59.5, VideoMME 62.4 vs 63.4), at twice the vision-encoder cost. When stride-1 frames are already at least
    one per second, more frames add mostly near-duplicates, so the policy keeps stride 1 and the cheaper encoding.

    Raises when the budget is smaller than one pooled frame's tokens.
    """
    if max_visual_tokens < tokens_per_frame:
        raise ValueError(
            f"`max_visual_tokens={max_visual_tokens}` is below the {tokens_per_frame} tokens of a single pooled frame; "
            f"pass at least {tokens_per_frame} (or a multiple of it)."
        )
    if temporal_sampling_stride is not None and temporal_sampling_stride < 1:
        raise ValueError(f"`temporal_sampling_stride` must be >= 1, got {temporal_sampling_stride}.")
    if total_frames < 1:
        raise ValueError(f"Cannot plan frames for a video of {total_frames} frames.")
    frames_per_stride = (max_visual_tokens // tokens_per_frame) * temporal_pool_size
    cap = min(total_frames, max_frames or total_frames)
    if temporal_sampling_stride is None:
        fits_at_stride_one = frames_per_stride >= cap
        dense_enough = duration is None or duration <= 0 or frames_per_stride / duration >= MIN_FRAMES_PER_SECOND
        temporal_sampling_stride = BUDGET_STRIDES[0] if fits_at_stride_one or dense_enough else BUDGET_STRIDES[-1]
    return FramePlan(min(cap, frames_per_stride * temporal_sampling_stride), temporal_sampling_stride)
