"""Token and memory accounting of a STORM model from its `StormConfig`: the LLM visual tokens of a video, the label of
a compression setting, and the language model's KV-cache and prefill-activation bytes.

`storm-hf info`, the demo, the model card, the benchmarks and the tests count with these functions; the token count
itself is `storm_hf.num_visual_tokens`, the primitive the processor ships with checkpoints.
"""

from .processing.token_budget import num_visual_tokens


def video_tokens(
    config,
    num_frames: int,
    *,
    image_size: int | None = None,
    temporal_pool_size: int | None = None,
    spatial_pool_size: int | None = None,
    temporal_sampling_stride: int | None = None,
) -> int:
    """LLM tokens of `num_frames` frames of `image_size`x`image_size` processed pixels (default: the vision tower's
    resolution), with the config's pooling and stride unless overridden (pass 1s for no compression)."""
    image_size = image_size or config.vision_config.image_size
    return num_visual_tokens(
        num_frames,
        image_size,
        image_size,
        patch_size=config.vision_config.patch_size,
        downsample_ratio=config.downsample_ratio,
        temporal_pool_size=temporal_pool_size or config.temporal_pool_size,
        spatial_pool_size=spatial_pool_size or config.spatial_pool_size,
        temporal_sampling_stride=temporal_sampling_stride or config.temporal_sampling_stride,
    )


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
