"""STORM for Hugging Face Transformers. Importing the package registers it with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
)

from .modeling import (
    StormConfig,
    StormForConditionalGeneration,
    StormMambaMixer,
    StormMambaState,
    StormModel,
    StormPreTrainedModel,
)
from .processing import StormProcessor, StormVideoProcessor, register_processing
from .processing.token_budget import num_visual_tokens


def _register_modeling():
    AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
    AutoModel.register(StormConfig, StormModel, exist_ok=True)
    AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
    AutoModelForMultimodalLM.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
    # `save_pretrained` then copies the code and writes `auto_map`: the checkpoint loads with `trust_remote_code=True`
    # where storm_hf is not installed.
    StormConfig.register_for_auto_class()
    StormForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")


_register_modeling()
register_processing()

__all__ = [
    "StormConfig",
    "StormForConditionalGeneration",
    "StormMambaMixer",
    "StormMambaState",
    "StormModel",
    "StormPreTrainedModel",
    "StormProcessor",
    "StormVideoProcessor",
    "num_visual_tokens",
]
