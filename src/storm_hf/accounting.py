"""Token and memory accounting of a STORM model from its `StormConfig`: the LLM visual tokens of a video, the label of
a compression setting, the parameters of each part, and the language model's KV-cache, prefill-activation and total
bytes.

`storm-hf info`, the demo, the model card, the benchmarks and the tests count with these functions; the token count
itself is `storm_hf.num_visual_tokens`, the primitive the processor ships with checkpoints.
"""

from dataclasses import dataclass

from .processing.token_budget import COMPRESSION_SETTINGS, num_visual_tokens, token_grid_settings


# The compression settings that leave every token: `video_tokens(config, n, **NO_COMPRESSION)`.
NO_COMPRESSION = dict.fromkeys(COMPRESSION_SETTINGS, 1)


def compression_of(config, temporal_sampling_stride: int | None = None) -> dict[str, int]:
    """The `COMPRESSION_SETTINGS` of `config`: its pooling sizes and its default temporal-sampling stride (unless
    `temporal_sampling_stride` is given)."""
    settings = {name: getattr(config, name) for name in COMPRESSION_SETTINGS}
    if temporal_sampling_stride is not None:
        settings["temporal_sampling_stride"] = temporal_sampling_stride
    return settings


def video_tokens(config, num_frames: int, *, image_size: int | None = None, **compression: int | None) -> int:
    """LLM tokens of `num_frames` frames of `image_size`x`image_size` processed pixels (default: the vision tower's
    resolution), with the config's compression unless `compression` (`COMPRESSION_SETTINGS` by name; None: the
    config's) overrides it, e.g. `**NO_COMPRESSION`."""
    unknown = sorted(compression.keys() - set(COMPRESSION_SETTINGS))
    if unknown:
        raise TypeError(f"`video_tokens` got {unknown}; the compression settings are {list(COMPRESSION_SETTINGS)}.")
    image_size = image_size or config.vision_config.image_size
    settings = token_grid_settings(config) | compression_of(config, compression.pop("temporal_sampling_stride", None))
    settings.update({name: value for name, value in compression.items() if value is not None})
    return num_visual_tokens(num_frames, image_size, image_size, **settings)


def compression_label(
    temporal_pool_size: int = 1, spatial_pool_size: int = 1, temporal_sampling_stride: int = 1
) -> str:
    """The paper's name of a compression setting, e.g. "T.Pool k=4 + T.Sampling s=2"; "none" without compression."""
    parts = [
        label
        for label, value in (
            (f"T.Pool k={temporal_pool_size}", temporal_pool_size),
            (f"S.Pool {spatial_pool_size}x{spatial_pool_size}", spatial_pool_size),
            (f"T.Sampling s={temporal_sampling_stride}", temporal_sampling_stride),
        )
        if value > 1
    ]
    return " + ".join(parts) or "none"


def head_dim(text_config) -> int:
    """Width of one attention head, by the rule of transformers' Qwen2 attention (5.23: `config.head_dim` when the
    config sets it, else `hidden_size // num_attention_heads`)."""
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def kv_cache_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Bytes the language model's KV cache holds per token: K and V of every layer and key-value head."""
    text = config.text_config
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim(text) * dtype_bytes


def kv_cache_bytes(config, num_tokens: int, dtype_bytes: int = 2) -> int:
    """Bytes of the KV cache of a prompt of `num_tokens` tokens."""
    return num_tokens * kv_cache_bytes_per_token(config, dtype_bytes)


def prefill_activation_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Estimated activation bytes per prompt token at prefill: one layer's MLP intermediates (gate, up) and four
    residual-stream-wide copies alive at once (an estimate, not a measurement)."""
    text = config.text_config
    return (2 * text.intermediate_size + 4 * text.hidden_size) * dtype_bytes


def prefill_activation_bytes(config, num_tokens: int, dtype_bytes: int = 2) -> int:
    """Estimated activation bytes at the prefill of a prompt of `num_tokens` tokens."""
    return num_tokens * prefill_activation_bytes_per_token(config, dtype_bytes)


def empty_model(config):
    """A `StormForConditionalGeneration` built from `config` on the meta device: every parameter has its shape, none
    is allocated."""
    import torch

    from .modeling import StormForConditionalGeneration

    with torch.device("meta"):
        return StormForConditionalGeneration(config)


def parameter_counts(config) -> dict[str, int]:
    """Parameters of the vision tower, the temporal projector and the language model (its LM head included unless
    tied to the embedding) of a STORM model built from `config`."""
    model = empty_model(config)

    def count(module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    untied_head = 0 if config.tie_word_embeddings else model.lm_head.weight.numel()
    return {
        "vision tower": count(model.model.vision_tower),
        "temporal projector": count(model.model.temporal_projector),
        "language model": count(model.model.language_model) + untied_head,
    }


@dataclass(frozen=True)
class LanguageModelMemory:
    """Estimated bytes the language model needs for one prompt: its weights, the prompt's KV cache and the prefill
    activations (`prefill_activation_bytes_per_token`: an estimate, not a measurement)."""

    weights: int
    kv_cache: int
    prefill_activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.prefill_activations


def language_model_memory(
    config, num_tokens: int, dtype_bytes: int = 2, num_parameters: int | None = None
) -> LanguageModelMemory:
    """`LanguageModelMemory` of a prompt of `num_tokens` tokens with weights and cache in `dtype_bytes`-byte numbers.
    `num_parameters` (the language model's, default: counted by `parameter_counts`) saves building the model again."""
    if num_parameters is None:
        num_parameters = parameter_counts(config)["language model"]
    return LanguageModelMemory(
        weights=num_parameters * dtype_bytes,
        kv_cache=kv_cache_bytes(config, num_tokens, dtype_bytes),
        prefill_activations=prefill_activation_bytes(config, num_tokens, dtype_bytes),
    )
