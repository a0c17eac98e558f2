"""STORM's registration with transformers, in one place: the Auto classes, code-shipping saves and the pipeline task.

`import storm_hf` runs `register()` once; nothing else registers. transformers has no entry-point discovery, so the
Auto classes know STORM only in a process that imported storm_hf.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    AutoVideoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling import StormConfig, StormForConditionalGeneration, StormModel
from .pipelines import VideoTextToTextPipeline
from .processing import StormProcessor, StormVideoProcessor


VIDEO_TEXT_TO_TEXT = "video-text-to-text"


def register() -> None:
    """Register STORM with transformers (idempotent):

    - `AutoConfig` ("storm"), `AutoModel`, `AutoModelForImageTextToText`, `AutoModelForMultimodalLM`, `AutoProcessor`
      and `AutoVideoProcessor` resolve STORM's classes;
    - `save_pretrained` copies the code and writes `auto_map` (with both `AutoModelForImageTextToText` and
      `AutoModelForMultimodalLM`: `StormForConditionalGeneration.save_pretrained`), so that a checkpoint loads with
      `trust_remote_code=True`, and `transformers serve` serves it, where storm_hf is not installed;
    - `pipeline("video-text-to-text")` builds a `VideoTextToTextPipeline` (transformers has no such task).
    """
    AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
    AutoModel.register(StormConfig, StormModel, exist_ok=True)
    AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
    AutoModelForMultimodalLM.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
    AutoVideoProcessor.register(StormConfig, StormVideoProcessor, exist_ok=True)
    AutoProcessor.register(StormConfig, StormProcessor, exist_ok=True)

    StormConfig.register_for_auto_class()
    StormForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    StormVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    StormProcessor.register_for_auto_class("AutoProcessor")

    # `register_pipeline` warns when it replaces a task, even by the same class.
    if PIPELINE_REGISTRY.supported_tasks.get(VIDEO_TEXT_TO_TEXT, {}).get("impl") is not VideoTextToTextPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            VIDEO_TEXT_TO_TEXT,
            pipeline_class=VideoTextToTextPipeline,
            pt_model=AutoModelForImageTextToText,
            type="multimodal",
        )
