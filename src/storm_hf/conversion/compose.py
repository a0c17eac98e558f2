"""Compose a STORM checkpoint from a pretrained SigLIP vision tower and a decoder-only language model (Llama, Mistral,
Qwen2, Qwen2.5, Qwen3, ... or Qwen2-VL's).

This is the paper's starting point for alignment (stage 1): the vision tower and the LLM come pretrained, the temporal
projector (Linear + Mamba stack) is freshly initialised.

Accepted vision layouts (by the `model_type` of the vision checkpoint's config), with the keys kept and dropped (and
why):

- `siglip_vision_model`: keeps `[vision_model.]{embeddings,encoder}.*`; drops `head.*`: attention-pooling head, STORM
  uses patch features.
- `siglip`: keeps `vision_model.{embeddings,encoder}.*`; drops `text_model.*` (text tower), `logit_scale`/`logit_bias`
  (contrastive loss), `vision_model.head.*`.
- `paligemma`: keeps `[model.]vision_tower[.vision_model].{embeddings,encoder}.*`; drops `multi_modal_projector.*`
  (replaced by STORM's projector), `language_model.*`/`lm_head.*` (Gemma).

In every vision layout, the encoder layers after `vision_feature_layer` and `post_layernorm` are dropped too (STORM
builds the tower only up to its feature layer) and reported with the layer numbers.

Accepted language layouts:

- a decoder-only causal LM (a `model_type` whose `AutoModelForCausalLM` class is `*ForCausalLM`: `llama`, `mistral`,
  `qwen2` (Qwen2 and Qwen2.5), `qwen3`, ...): keeps `model.*` -> `model.language_model.*`, `lm_head.weight` (absent
  when tied); drops nothing. The language model keeps its own type: STORM builds it with `AutoModel`.
- `qwen2_vl`, `qwen2_5_vl`: keeps `model.language_model.*` or legacy `model.*`, `lm_head.weight`; drops
  `[model.]visual.*`: Qwen2-VL's own vision encoder and merger, replaced by SigLIP + the temporal projector.

The tokenizer gets the vision special tokens it lacks; when their ids fall beyond the language model's embedding, the
input and output embeddings grow by as many rows, initialised from the mean of the old rows
(`resize_token_embeddings(..., mean_resizing=True)`).

Qwen2-VL's language model is a Qwen2 decoder with multimodal RoPE; with text-like (1-D) positions its three RoPE
sections share one position, which is ordinary RoPE, so it is loaded as Qwen2 (`mrope_section` is dropped from the
RoPE parameters). Every dropped group is reported; any key outside these layouts fails the composition.
"""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen2Config
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..modeling import StormConfig
from .checkpoint_io import (
    ConversionError,
    KeyMapping,
    MappedKeys,
    Rule,
    check_complete,
    load_storm_model,
    model_shapes,
    open_state_dict,
    resolve_checkpoint,
    resolve_dtype,
)
from .processor import add_vision_tokens, build_processor, fit_embeddings_to_tokenizer


VISION_PARTS = r"(embeddings|encoder)\.(.*)"
VISION_TARGET = r"model.vision_tower.\1.\2"
HEAD_REASON = "SigLIP's attention-pooling head; STORM feeds patch features of `vision_feature_layer` to its projector"
POST_LAYERNORM_REASON = (
    "SigLIP's final LayerNorm (after the last layer); STORM reads the raw output of `vision_feature_layer` and does "
    "not build it"
)
# Where the SigLIP vision weights sit in each vision layout, and the rules for that layout's other parts.
VISION_PREFIXES = {
    "siglip_vision_model": r"(?:vision_model\.)?",
    "siglip": r"vision_model\.",
    "paligemma": r"(?:model\.)?vision_tower\.(?:vision_model\.)?",
}
OTHER_VISION_PARTS = {
    "siglip_vision_model": [],
    "siglip": [
        Rule(r"text_model\..*", None, "SigLIP's text tower, used only for contrastive pre-training"),
        Rule(r"logit_(scale|bias)", None, "SigLIP's contrastive-loss temperature and bias"),
    ],
    "paligemma": [
        Rule(
            r"(?:model\.)?multi_modal_projector\..*",
            None,
            "PaliGemma's projector into Gemma; STORM's freshly initialised Linear + Mamba projector replaces it",
        ),
        Rule(
            r"(?:model\.)?language_model\..*|lm_head\..*",
            None,
            "PaliGemma's Gemma language model; STORM's language model comes from the language checkpoint",
        ),
    ],
}


def siglip_rules(prefix: str, config: StormConfig) -> list[Rule]:
    """Rules for SigLIP vision weights under `prefix` (a regex): the embeddings and the encoder layers up to
    `config.vision_feature_layer` map onto STORM's vision tower; the later layers, `post_layernorm` and the pooling head
    are dropped, each with its reason (STORM does not build them, see `build_vision_encoder`)."""
    used, total = config.num_vision_layers_used, config.vision_config.num_hidden_layers
    rules = []
    if used < total:
        unused = "|".join(str(index) for index in range(used, total))
        rules.append(
            Rule(
                rf"{prefix}encoder\.layers\.(?:{unused})\..*",
                None,
                f"vision encoder layers {used}..{total - 1}, after `vision_feature_layer={config.vision_feature_layer}`"
                f" (its features are layer {used}'s output); STORM builds only layers 0..{used - 1}",
            )
        )
    return rules + [
        Rule(rf"{prefix}{VISION_PARTS}", VISION_TARGET),
        Rule(rf"{prefix}post_layernorm\..*", None, POST_LAYERNORM_REASON),
        Rule(rf"{prefix}head\..*", None, HEAD_REASON),
    ]


def vision_rules(model_type: str, config: StormConfig) -> list[Rule]:
    """The key rules of a vision checkpoint of `model_type` for a STORM model built from `config`."""
    return siglip_rules(VISION_PREFIXES[model_type], config) + OTHER_VISION_PARTS[model_type]


QWEN2_VL_VISUAL_REASON = (
    "Qwen2-VL's own vision encoder and patch merger; STORM sees through SigLIP and its temporal projector instead"
)
CAUSAL_LM_RULES = [
    Rule(r"model\.(.*)", r"model.language_model.\1"),
    Rule(r"(embed_tokens|layers|norm)\.(.*)", r"model.language_model.\1.\2"),  # a bare decoder (e.g. Qwen2Model)
    Rule(r"lm_head\.weight", "lm_head.weight"),
]
QWEN2_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")
QWEN2_VL_RULES = [
    Rule(r"model\.language_model\.(.*)", r"model.language_model.\1"),
    Rule(r"(?:model\.)?visual\..*", None, QWEN2_VL_VISUAL_REASON),
    Rule(r"model\.(.*)", r"model.language_model.\1"),  # layout written by transformers < 4.52 (and by 5.x saves)
    Rule(r"lm_head\.weight", "lm_head.weight"),
]

# Config fields that describe a checkpoint rather than the decoder; not copied into STORM's text config.
_CHECKPOINT_FIELDS = {"architectures", "transformers_version", "_name_or_path", "dtype", "id2label", "label2id"}


def vision_config_of(config) -> dict:
    """The SigLIP vision config of a SiglipVisionModel, SiglipModel or PaliGemma config, without the pooling head."""
    model_type = config.model_type
    if model_type not in VISION_PREFIXES:
        raise ConversionError(
            f"Vision checkpoint of type '{model_type}' is not supported; pass a SiglipVisionModel, SiglipModel or "
            f"PaliGemma checkpoint ({sorted(VISION_PREFIXES)})."
        )
    vision = config if model_type == "siglip_vision_model" else config.vision_config
    settings = {k: v for k, v in vision.to_dict().items() if k not in _CHECKPOINT_FIELDS}
    settings.update(model_type="siglip_vision_model", vision_use_head=False)
    return settings


def language_rules(model_type: str) -> list[Rule]:
    """The key rules of a language checkpoint of `model_type`: Qwen2-VL's, or a decoder-only causal LM's; raises for
    any other type."""
    if model_type in QWEN2_VL_TYPES:
        return QWEN2_VL_RULES
    if MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "").endswith("ForCausalLM"):
        return CAUSAL_LM_RULES
    raise ConversionError(
        f"Language checkpoint of type '{model_type}' is not supported; pass a decoder-only language model that "
        f"`AutoModelForCausalLM` loads as `*ForCausalLM` (e.g. llama, mistral, qwen2, qwen3) or a Qwen2-VL checkpoint "
        f"({', '.join(QWEN2_VL_TYPES)})."
    )


def text_config_of(config) -> dict:
    """The text config of a decoder-only language model config (a Qwen2 one for the language model of a Qwen2-VL
    config), with `tie_word_embeddings`: whether the LM ties its input and output embeddings."""
    language_rules(config.model_type)
    text = config.get_text_config()
    settings = {k: v for k, v in text.to_dict().items() if k not in _CHECKPOINT_FIELDS}
    if config.model_type in QWEN2_VL_TYPES:
        qwen2_fields = set(Qwen2Config().to_dict())
        settings = {k: v for k, v in settings.items() if k in qwen2_fields}
        rope = dict(settings.get("rope_parameters") or {})
        if "mrope_section" in rope:  # 1-D positions: multimodal RoPE is ordinary RoPE (module docstring)
            rope = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
        settings.update(model_type="qwen2", rope_parameters=rope or None)
    tie = getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False)
    settings["tie_word_embeddings"] = bool(tie)
    return settings


def compose_storm(
    vision: str | Path,
    language: str | Path,
    output_dir: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    num_frames: int = 32,
    max_shard_size: str | int = "5GB",
    **config_overrides,
):
    """Build a STORM model from a SigLIP vision checkpoint and a decoder-only language model checkpoint (local folders
    or Hub ids).

    Args:
        vision: SiglipVisionModel, SiglipModel or PaliGemma checkpoint.
        language: a decoder-only causal LM (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
            `Qwen3ForCausalLM`, ...) or a Qwen2-VL / Qwen2.5-VL checkpoint; its tokenizer is used unless `tokenizer`
            names another. Missing Qwen2-VL vision tokens are added to the tokenizer, and to the embeddings when they
            have no spare rows (see the module docstring).
        output_dir: when given, the checkpoint is written there: sharded safetensors (`max_shard_size`), config with
            `auto_map` and the model code, processor with chat template, generation config and a model card.
        dtype: weights' dtype; default: the language model's.
        num_frames: frames the processor samples per video by default.
        config_overrides: `StormConfig` fields (e.g. `mamba_num_layers`, `temporal_pool_size`, `vision_feature_layer`).

    Returns `(model, processor, report)`; the report (text) lists what was dropped from each source and why.
    """
    vision_folder, language_folder = resolve_checkpoint(vision), resolve_checkpoint(language)
    tokenizer_folder = resolve_checkpoint(tokenizer) if tokenizer is not None else language_folder
    vision_source_config = AutoConfig.from_pretrained(vision_folder)
    language_source_config = AutoConfig.from_pretrained(language_folder)
    text_config = text_config_of(language_source_config)
    report = []

    tokenizer_object = AutoTokenizer.from_pretrained(tokenizer_folder)
    added = add_vision_tokens(tokenizer_object)
    if added:
        report.append(f"added special tokens {added} to the tokenizer")
    config = StormConfig(
        vision_config=vision_config_of(vision_source_config),
        text_config=text_config,
        image_token_id=tokenizer_object.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer_object.convert_tokens_to_ids("<|video_pad|>"),
        tie_word_embeddings=text_config["tie_word_embeddings"],
        **config_overrides,
    )
    shapes = model_shapes(config)
    fresh = {key for key in shapes if key.startswith("model.temporal_projector.")}

    with open_state_dict(vision_folder) as vision_tensors, open_state_dict(language_folder) as language_tensors:
        mapped_vision = KeyMapping(
            f"vision checkpoint '{vision}'", vision_rules(vision_source_config.model_type, config)
        ).apply(vision_tensors)
        mapped_language = KeyMapping(
            f"language checkpoint '{language}'", language_rules(language_source_config.model_type)
        ).apply(language_tensors)
        mapped = MappedKeys()
        mapped.update(mapped_vision)
        mapped.update(mapped_language)
        tensors = {
            **{("v", k): t for k, t in vision_tensors.items()},
            **{("l", k): t for k, t in language_tensors.items()},
        }
        sources = {target: ("v", source) for target, source in mapped_vision.renamed.items()}
        sources.update({target: ("l", source) for target, source in mapped_language.renamed.items()})
        check_complete(MappedKeys(renamed=sources, dropped=mapped.dropped), tensors, shapes, fresh)
        state_dict = {target: tensors[source] for target, source in sources.items()}
        model = load_storm_model(config, state_dict, fresh, resolve_dtype(dtype, language_source_config))
    report += fit_embeddings_to_tokenizer(model, tokenizer_object, added)

    report += [f"vision: {line}" for line in mapped_vision.describe_dropped()]
    report += [f"language: {line}" for line in mapped_language.describe_dropped()]
    report.append(
        f"freshly initialised: {len(fresh)} temporal-projector tensor(s) "
        f"(Linear + {config.mamba_num_layers} Mamba layers)"
    )
    if (language_folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(language_folder)
    processor = build_processor(tokenizer_object, config, num_frames=num_frames)

    if output_dir is not None:
        from ..hub import save_checkpoint

        save_checkpoint(
            model,
            processor,
            output_dir,
            base_models=[str(vision), str(language)],
            max_shard_size=max_shard_size,
            provenance="\n".join(report),
        )
    return model, processor, "\n".join(report)


__all__ = ["compose_storm"]
