"""Convert a VILA/NVILA-style STORM training checkpoint into one Hugging Face checkpoint.

Source layout (the folders NVILA's trainer saves; no STORM checkpoint has been published, so the projector's keys are
defined here):

    <checkpoint>/
        config.json       optional, VILA's top-level config: `mm_vision_select_layer` (-> `vision_feature_layer`,
                          default -2), `num_video_frames` (-> the processor's default frame count)
        llm/              a decoder-only causal LM save (NVILA: Qwen2ForCausalLM; VILA 1.5: LlamaForCausalLM):
                          config.json, weights, tokenizer files, generation_config.json
        vision_tower/     a SiglipVisionModel save: config.json, weights (`[vision_model.]embeddings.*`, `encoder.*`,
                          `post_layernorm.*`, and `head.*` when its config has `vision_use_head`)
        mm_projector/     config.json with `"mm_projector_type": "storm_mamba"` and optional `downsample_ratio`,
                          `temporal_pool_size`, `spatial_pool_size`, `mamba_*` settings; weights of an
                          `nn.Sequential` called `layers`, NVILA-style:
                              layers.0    2x2 pixel-shuffle (NVILA's `DownSampleBlock`; no weights)
                              layers.1    Linear(4 * vision hidden, LLM hidden): `weight`, `bias`
                              layers.2+i  Mamba layer i: `norm.{weight,bias}`, `mixer.{in_proj.weight,
                                          conv1d.{weight,bias}, x_proj.weight, dt_proj.{weight,bias}, A_log, D,
                                          out_proj.weight}` and, bidirectional, `mixer.{conv1d_b.{weight,bias},
                                          x_proj_b.weight, dt_proj_b.{weight,bias}, A_b_log, D_b}`

NVILA's `DownSampleBlock.flat_square` concatenates each 2x2 window's channels in raster order (top-left, top-right,
bottom-left, bottom-right) after zero-padding odd grids at the bottom/right: the same layout as `StormPixelShuffle`, so
the Linear's weight is copied unchanged (`tests/test_conversion.py` checks the two shuffles agree).

Each weight file may be safetensors or a pickle (`pytorch_model.bin`, read with `torch.load(weights_only=True)`).
The mapping is strict: every source key becomes exactly one STORM key or is dropped for a reported reason (only the
vision tower's unbuilt parts: the encoder layers after `vision_feature_layer`, `post_layernorm` and `head`), every STORM
key comes from exactly one source key, and anything else raises `ConversionError` naming the keys.
"""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

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
    read_json,
    resolve_dtype,
    tensor_shape,
)
from .compose import VISION_PREFIXES, language_rules, siglip_rules, text_config_of
from .processor import add_vision_tokens, build_processor, fit_embeddings_to_tokenizer


PROJECTOR_TYPE = "storm_mamba"
_MIXER_WEIGHTS = (
    r"in_proj\.weight|out_proj\.weight|conv1d(?:_b)?\.(?:weight|bias)|x_proj(?:_b)?\.weight"
    r"|dt_proj(?:_b)?\.(?:weight|bias)|A(?:_b)?_log|D(?:_b)?"
)
FIRST_MAMBA_INDEX = 2  # layers.0: pixel-shuffle, layers.1: Linear

PROJECTOR_RULES = [
    Rule(r"layers\.1\.(weight|bias)", r"model.temporal_projector.linear.\1"),
    Rule(
        rf"layers\.(\d+)\.(norm\.(?:weight|bias)|mixer\.(?:{_MIXER_WEIGHTS}))",
        lambda match: f"model.temporal_projector.layers.{int(match[1]) - FIRST_MAMBA_INDEX}.{match[2]}",
    ),
]
# mm_projector/config.json fields copied into StormConfig when present.
PROJECTOR_CONFIG_FIELDS = (
    "downsample_ratio",
    "mamba_num_layers",
    "mamba_state_size",
    "mamba_conv_kernel",
    "mamba_expand",
    "mamba_time_step_rank",
    "mamba_bidirectional",
    "temporal_pool_size",
    "spatial_pool_size",
    "temporal_sampling_stride",
)


def projector_settings(projector_config: dict, tensors, llm_hidden_size: int) -> dict:
    """StormConfig projector settings: those `mm_projector/config.json` states, the rest read off the weight shapes."""
    if projector_config.get("mm_projector_type") != PROJECTOR_TYPE:
        raise ConversionError(
            f"mm_projector/config.json has mm_projector_type={projector_config.get('mm_projector_type')!r}; only "
            f"{PROJECTOR_TYPE!r} (STORM's Linear + Mamba projector) converts to STORM."
        )
    settings = {name: projector_config[name] for name in PROJECTOR_CONFIG_FIELDS if name in projector_config}
    mamba_layers = sorted(
        {
            int(key.split(".")[1])
            for key in tensors
            if key.startswith("layers.") and key.split(".")[2] in ("norm", "mixer")
        }
    )
    if mamba_layers != list(range(FIRST_MAMBA_INDEX, FIRST_MAMBA_INDEX + len(mamba_layers))):
        raise ConversionError(
            f"mm_projector Mamba layers must be numbered layers.{FIRST_MAMBA_INDEX}, "
            f"layers.{FIRST_MAMBA_INDEX + 1}, ...; "
            f"found layers {mamba_layers}."
        )
    first = f"layers.{FIRST_MAMBA_INDEX}.mixer."
    inferred = {"mamba_num_layers": len(mamba_layers)}
    if f"{first}A_log" in tensors:
        intermediate, state_size = tensor_shape(tensors[f"{first}A_log"])
        inferred.update(
            mamba_state_size=state_size,
            mamba_expand=intermediate // llm_hidden_size,
            mamba_bidirectional=f"{first}A_b_log" in tensors,
        )
    if f"{first}conv1d.weight" in tensors:
        inferred["mamba_conv_kernel"] = tensor_shape(tensors[f"{first}conv1d.weight"])[-1]
    if f"{first}dt_proj.weight" in tensors:
        inferred["mamba_time_step_rank"] = tensor_shape(tensors[f"{first}dt_proj.weight"])[-1]
    conflicts = {k: (settings[k], v) for k, v in inferred.items() if k in settings and settings[k] != v}
    if conflicts:
        raise ConversionError(f"mm_projector/config.json disagrees with the weights (config, weights): {conflicts}")
    return {**inferred, **settings}


def convert_vila_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    num_frames: int | None = None,
    max_shard_size: str | int = "5GB",
    **config_overrides,
):
    """Convert a VILA/NVILA-style STORM checkpoint folder (see the module docstring) to a STORM model and processor.

    `config_overrides` set StormConfig fields the checkpoint does not fix (e.g. `temporal_sampling_stride`); weight
    shapes still have to match. With `output_dir` the result is saved like `compose_storm` saves. Returns
    `(model, processor, report)`.
    """
    root = Path(checkpoint)
    folders = {name: root / name for name in ("llm", "vision_tower", "mm_projector")}
    absent = [name for name, folder in folders.items() if not folder.is_dir()]
    if absent:
        raise ConversionError(
            f"'{root}' is not a VILA checkpoint: missing folder(s) {absent} "
            "(expected llm/, vision_tower/, mm_projector/)."
        )
    top_config = read_json(root / "config.json") if (root / "config.json").is_file() else {}
    llm_config = AutoConfig.from_pretrained(folders["llm"])
    vision_config = AutoConfig.from_pretrained(folders["vision_tower"])
    if vision_config.model_type != "siglip_vision_model":
        raise ConversionError(
            f"vision_tower/ holds a '{vision_config.model_type}' model; expected a SiglipVisionModel."
        )
    text_config = text_config_of(llm_config)
    vision_settings = {
        k: v
        for k, v in vision_config.to_dict().items()
        if k not in ("architectures", "transformers_version", "_name_or_path", "dtype")
    }
    tokenizer = AutoTokenizer.from_pretrained(folders["llm"])
    added = add_vision_tokens(tokenizer)
    report = [f"added special tokens {added} to the tokenizer"] if added else []

    with (
        open_state_dict(folders["vision_tower"]) as vision_tensors,
        open_state_dict(folders["llm"]) as llm_tensors,
        open_state_dict(folders["mm_projector"]) as projector_tensors,
    ):
        settings = projector_settings(
            read_json(folders["mm_projector"] / "config.json"), projector_tensors, text_config["hidden_size"]
        )
        settings["vision_feature_layer"] = top_config.get("mm_vision_select_layer", -2)
        config = StormConfig(
            vision_config=vision_settings,
            text_config=text_config,
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            tie_word_embeddings=text_config["tie_word_embeddings"],
            **{**settings, **config_overrides},
        )
        parts = {
            "vision_tower": (vision_tensors, siglip_rules(VISION_PREFIXES["siglip_vision_model"], config)),
            "llm": (llm_tensors, language_rules(llm_config.model_type)),
            "mm_projector": (projector_tensors, PROJECTOR_RULES),
        }
        sources, tensors, dropped = {}, {}, []
        for part, (part_tensors, rules) in parts.items():
            mapped = KeyMapping(f"{part}/", rules).apply(part_tensors)
            dropped += [f"{part}/: {line}" for line in mapped.describe_dropped()]
            filled_twice = sources.keys() & mapped.renamed.keys()
            if filled_twice:
                raise ConversionError(f"STORM keys filled by two parts: {sorted(filled_twice)[:10]}")
            sources.update({target: (part, source) for target, source in mapped.renamed.items()})
            tensors.update({(part, key): tensor for key, tensor in part_tensors.items()})
        check_complete(MappedKeys(renamed=sources), tensors, model_shapes(config), fresh_keys=set())
        state_dict = {target: tensors[source] for target, source in sources.items()}
        model = load_storm_model(config, state_dict, set(), resolve_dtype(dtype, llm_config))
    report += fit_embeddings_to_tokenizer(model, tokenizer, added)

    report += dropped
    report.append(f"converted {len(state_dict)} tensors: every other source key mapped, none freshly initialised")
    if (folders["llm"] / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folders["llm"])
    processor = build_processor(tokenizer, config, num_frames=num_frames or top_config.get("num_video_frames") or 32)
    if output_dir is not None:
        from ..hub import save_checkpoint

        save_checkpoint(
            model, processor, output_dir, base_models=[], max_shard_size=max_shard_size, provenance="\n".join(report)
        )
    return model, processor, "\n".join(report)


__all__ = ["convert_vila_checkpoint", "PROJECTOR_TYPE"]
