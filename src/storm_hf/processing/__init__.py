"""Processing of STORM inputs: video decoding and sampling, the video processor and the processor.

The modules here are shipped with checkpoints as remote code, so they import each other with single-dot relative
imports only; this `__init__` is not shipped.
"""

from .processing_storm import StormProcessor
from .token_budget import FramePlan, frames_within_budget, num_visual_tokens, visual_token_grid
from .video_decoding import StormVideoMetadata, VideoDecodingError, read_video
from .video_processing_storm import StormVideoProcessor, StormVideoProcessorKwargs


def register_processing():
    """Register the video processor and processor with the Auto classes and for `trust_remote_code` saving, and the
    `video-text-to-text` pipeline task."""
    from transformers import AutoProcessor, AutoVideoProcessor

    from ..modeling.configuration_storm import StormConfig
    from ..pipelines import register_pipelines

    AutoVideoProcessor.register(StormConfig, StormVideoProcessor, exist_ok=True)
    AutoProcessor.register(StormConfig, StormProcessor, exist_ok=True)
    StormVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    StormProcessor.register_for_auto_class("AutoProcessor")
    register_pipelines()


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
