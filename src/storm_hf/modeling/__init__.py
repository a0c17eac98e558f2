from .configuration_storm import StormConfig
from .modeling_storm import (
    StormForConditionalGeneration,
    StormMambaMixer,
    StormMambaState,
    StormModel,
    StormPreTrainedModel,
)


__all__ = [
    "StormConfig",
    "StormForConditionalGeneration",
    "StormMambaMixer",
    "StormMambaState",
    "StormModel",
    "StormPreTrainedModel",
]
