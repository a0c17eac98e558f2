"""STORM for Hugging Face Transformers. Importing the package registers it with the Auto classes."""

from . import registration
from .modeling import (
    StormConfig,
    StormForConditionalGeneration,
    StormMambaMixer,
    StormMambaState,
    StormModel,
    StormPreTrainedModel,
)
from .processing import StormProcessor, StormVideoProcessor, VideoDecodingError, VideoIntakePolicy
from .processing.token_budget import num_visual_tokens


registration.register()

__all__ = [
    "StormConfig",
    "StormForConditionalGeneration",
    "StormMambaMixer",
    "StormMambaState",
    "StormModel",
    "StormPreTrainedModel",
    "StormProcessor",
    "StormVideoProcessor",
    "VideoDecodingError",
    "VideoIntakePolicy",
    "num_visual_tokens",
]
