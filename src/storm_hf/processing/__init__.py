"""Processing of STORM inputs: video decoding and sampling, the video processor and the processor.

The modules here are shipped with checkpoints as remote code, so they import each other with single-dot relative
imports only; this `__init__` is not shipped.
"""

from ..deprecation import registration_no_op
from .processing_storm import StormProcessor
from .token_budget import FramePlan, frames_within_budget, num_visual_tokens, visual_token_grid
from .video_decoding import StormVideoMetadata, VideoDecodingError, read_video
from .video_processing_storm import StormVideoProcessor, StormVideoProcessorKwargs


register_processing = registration_no_op("register_processing")

__all__ = [
    "FramePlan",
    "StormProcessor",
    "StormVideoMetadata",
    "StormVideoProcessor",
    "StormVideoProcessorKwargs",
    "VideoDecodingError",
    "frames_within_budget",
    "num_visual_tokens",
    "read_video",
    "register_processing",
    "visual_token_grid",
]
