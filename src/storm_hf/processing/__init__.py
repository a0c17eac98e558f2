"""Processing of STORM inputs: video decoding and sampling, the video processor and the processor.

The modules here are shipped with checkpoints as remote code, so they import each other with single-dot relative
imports only; this `__init__` is not shipped.
"""

from .processing_storm import StormProcessor
from .token_budget import FramePlan, frames_within_budget, num_visual_tokens, visual_token_grid
from .video_decoding import StormVideoMetadata, VideoDecodingError, iter_video_frames, read_video
from .video_intake import (
    ByteBudgetError,
    DeadlineExceededError,
    FormatRefusedError,
    FrameCountBudgetError,
    FramePixelBudgetError,
    ImageNotVideoError,
    MissingTimestampsError,
    NotARegularFileError,
    PrivateAddressError,
    TooManyRedirectsError,
    VideoBudgetError,
    VideoIntakePolicy,
    VideoSourceRefusedError,
)
from .video_processing_storm import StormVideoProcessor, StormVideoProcessorKwargs


__all__ = [
    "ByteBudgetError",
    "DeadlineExceededError",
    "FormatRefusedError",
    "FrameCountBudgetError",
    "FramePixelBudgetError",
    "ImageNotVideoError",
    "MissingTimestampsError",
    "NotARegularFileError",
    "PrivateAddressError",
    "TooManyRedirectsError",
    "VideoBudgetError",
    "VideoIntakePolicy",
    "VideoSourceRefusedError",
    "FramePlan",
    "StormProcessor",
    "StormVideoMetadata",
    "StormVideoProcessor",
    "StormVideoProcessorKwargs",
    "VideoDecodingError",
    "frames_within_budget",
    "iter_video_frames",
    "num_visual_tokens",
    "read_video",
    "visual_token_grid",
]
