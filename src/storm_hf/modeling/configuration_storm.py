"""STORM model configuration."""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES


@strict
class StormConfig(PreTrainedConfig):
    r"""
    Configuration of a STORM model: SigLIP vision tower -> 2x2 pixel-shuffle -> Linear -> Mamba stack (the temporal
    projector) -> token compression -> language model ("Token-Efficient Long Video Understanding for Multimodal LLMs",
    Jiang et al. 2025). `StormConfig()` describes the paper's 7B model.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            The vision tower. Defaults to PaliGemma's SigLIP-so400m at 448 px, patch 14 (a 32x32 patch grid), without
            the attention-pooling head (STORM uses patch features).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The language model: any decoder-only model `AutoModel` builds (Llama, Mistral, Qwen2, Qwen3, ...).
            Defaults to the Qwen2 language model of Qwen2-VL-7B-Instruct.
        image_token_id (`int`, defaults to 151655):
            Placeholder of one image token (`<|image_pad|>` in the Qwen2-VL vocabulary).
        video_token_id (`int`, defaults to 151656):
            Placeholder of one video token (`<|video_pad|>` in the Qwen2-VL vocabulary).
        vision_feature_layer (`int`, defaults to -2):
            Hidden state of the vision tower fed to the projector (VILA takes the second-to-last layer). Only the
            layers up to it are built (`num_vision_layers_used`); `vision_config` still describes the whole tower, so
            checkpoints of the full SigLIP load (the unused layers and the post-layernorm are reported and skipped).
        vision_batch_size (`int`, defaults to 16):
            Frames per vision-tower call: a video's frames go through the tower in micro-batches of this many, so the
            tower's activation memory is bounded by the batch, not by the video. Overridable per call
            (`vision_batch_size=` in `forward`, `generate`, `get_video_features`, `get_frame_features`). For
            SigLIP-so400m at 448 px (1024 tokens x 1152 wide, MLP 4304, 16 heads) one frame inside one layer holds,
            in bfloat16, ~2.4 MB of hidden state, ~8.8 MB of MLP activation and, with eager attention, ~34 MB of
            attention scores (SDPA/flash never materialise them): at most ~45 MB per frame, so 16 frames stay under
            0.75 GB (1.5 GB in float32) whatever the video's length, while 16 x 1024 = 16384 tokens per matmul
            already keep a GPU's matrix units busy (larger batches barely run faster). Keeping every hidden state of
            every frame instead costs 28 x 2.4 MB = 66 MB per frame: 17 GB at 256 frames.
        downsample_ratio (`int`, defaults to 2):
            Side of the pixel-shuffle (space-to-depth) window applied to the patch grid: 32x32 -> 16x16 tokens of
            width `downsample_ratio**2 * vision_hidden_size`. An odd grid is zero-padded first, as in NVILA.
        mamba_num_layers (`int`, defaults to 2):
            Pre-norm residual Mamba layers in the temporal projector. Not given by the paper; two layers mix every
            token with both neighbours. The paper puts the projector at <= 3% of latency; on CPU without mamba-ssm's
            kernels the two layers cost more (measured in `docs/peers.md`).
            `0` removes the temporal encoder: the projector is the pixel-shuffle and the Linear alone, frames stay
            independent until the token compressor (the paper's VILA-style baseline, for ablations).
        mamba_state_size (`int`, defaults to 16):
            SSM state size per channel (`d_state`). Not given by the paper; Mamba's default.
        mamba_conv_kernel (`int`, defaults to 4):
            Width of the causal depthwise convolution (`d_conv`). Not given by the paper; Mamba's default.
        mamba_expand (`int`, defaults to 2):
            Inner width of the mixer as a multiple of the LLM hidden size. Not given by the paper; Mamba's default.
        mamba_time_step_rank (`int` or `"auto"`, defaults to `"auto"`):
            Rank of the time-step projection (`dt_rank`); `"auto"` is `ceil(hidden_size / 16)`, Mamba's default.
        mamba_bidirectional (`bool`, defaults to `True`):
            Scan the flattened spatiotemporal sequence forward and backward (the paper's main model; Vision Mamba
            layout: shared in/out projections, a second conv/x/dt/A/D for the reversed scan, outputs summed). `False`
            gives the paper's causal variant, whose state can be carried across calls for streaming.
        mamba_inference_chunk_length (`int` or `None`, defaults to 128):
            Positions of the flattened video sequence each Mamba layer scans at a time at inference (no gradient) on
            the PyTorch scan: memory against speed. A sequence of at most this many positions is scanned at once
            (`in_proj` and `out_proj` run once for both directions); a longer one in chunks of this many, each
            direction carrying its state from chunk to chunk (same output; `in_proj` and `out_proj` then run once per
            direction, and the layer's working memory is one chunk's intermediates whatever the video's length).
            `None`: always at once. Training and mamba-ssm's CUDA scan always scan the whole sequence. 128 keeps
            `benchmarks/bench_long_video.py` within its memory target. `benchmarks/bench_chunk_length.py`
            (2 layers of width 896, one CPU thread, `results/chunk_length.md`): at 4096 / 16384 positions 128 takes
            1.3x / 1.3x the time of the whole sequence (the per-direction `in_proj`/`out_proj`) for 44 / 128 MiB
            instead of 221 / 855 MiB; 512 1.4x / 1.15x, 2048 1.2x / 1.2x, 32 1.9x / 1.5x. Set `None` (or more) where
            the projector's speed matters more than its memory.
        temporal_pool_size (`int`, defaults to 4):
            Frames averaged into one after the projector (trained; the paper's best model uses 4). A last group with
            fewer frames is averaged over the frames it has.
        spatial_pool_size (`int`, defaults to 1):
            Side of the average-pooling window inside each frame after the projector (trained; 2 gives 256 -> 64).
        temporal_sampling_stride (`int`, defaults to 1):
            Test-time only: keep every `temporal_sampling_stride`-th pooled frame. The processor can override it per
            call; the model uses the value the processor sent with the pixels.

    Example:

    ```python
    >>> from storm_hf import StormConfig, StormForConditionalGeneration
    >>> config = StormConfig(temporal_pool_size=4)
    >>> model = StormForConditionalGeneration(config)
    ```
    """

    model_type = "storm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="siglip_vision_model",
            init_kwargs={
                "hidden_size": 1152,
                "intermediate_size": 4304,
                "num_hidden_layers": 27,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 448,
                "vision_use_head": False,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="qwen2",
            init_kwargs={
                "vocab_size": 152064,
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                "bos_token_id": 151643,
                "eos_token_id": 151645,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_feature_layer: int = -2
    downsample_ratio: int = 2
    mamba_num_layers: int = 2
    mamba_state_size: int = 16
    mamba_conv_kernel: int = 4
    mamba_expand: int = 2
    mamba_time_step_rank: int | Literal["auto"] = "auto"
    mamba_bidirectional: bool = True
    mamba_inference_chunk_length: int | None = 128
    temporal_pool_size: int = 4
    spatial_pool_size: int = 1
    temporal_sampling_stride: int = 1
    vision_batch_size: int = 16
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.mamba_time_step_rank == "auto":
            self.mamba_time_step_rank = math.ceil(self.text_config.hidden_size / 16)

    @property
    def merged_grid_size(self) -> int:
        """Side of a frame's token grid after the pixel-shuffle (16 for 448 px, patch 14, ratio 2)."""
        patches_per_side = self.vision_config.image_size // self.vision_config.patch_size
        return math.ceil(patches_per_side / self.downsample_ratio)

    @property
    def num_vision_layers_used(self) -> int:
        """Vision encoder layers `vision_feature_layer` reads (hidden state k is layer k's output, 0 the embeddings):
        26 of SigLIP-so400m's 27 for -2. Only these are built."""
        return self.vision_feature_layer % (self.vision_config.num_hidden_layers + 1)

    def validate_architecture(self):
        """Rejects settings no STORM model can run with, naming the setting and what would work."""
        super().validate_architecture()
        if self.mamba_num_layers < 0:
            raise ValueError(f"`mamba_num_layers` must be >= 0 (0: no temporal encoder), got {self.mamba_num_layers}.")
        for name in (
            "downsample_ratio",
            "mamba_state_size",
            "mamba_conv_kernel",
            "mamba_expand",
            "mamba_time_step_rank",
            "mamba_inference_chunk_length",
            "temporal_pool_size",
            "spatial_pool_size",
            "temporal_sampling_stride",
            "vision_batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if self.merged_grid_size % self.spatial_pool_size:
            raise ValueError(
                f"`spatial_pool_size={self.spatial_pool_size}` does not divide the {self.merged_grid_size}x"
                f"{self.merged_grid_size} token grid ({self.vision_config.image_size} px images, patch "
                f"{self.vision_config.patch_size}, pixel-shuffle {self.downsample_ratio}); use a divisor of "
                f"{self.merged_grid_size}."
            )
        num_hidden_states = self.vision_config.num_hidden_layers + 1  # the embeddings, then each layer's output
        if not -num_hidden_states <= self.vision_feature_layer < num_hidden_states:
            raise ValueError(
                f"`vision_feature_layer={self.vision_feature_layer}` is outside the vision tower's {num_hidden_states} "
                f"hidden states: use -{num_hidden_states}..{num_hidden_states - 1}."
            )


# `transformers serve` (transformers/cli/serving/model_manager.py) loads a model with `AutoModelForMultimodalLM` only
# when its model type is a key of this table, else as `getattr(transformers, architectures[0])`, and reads the
# modality (which inputs a request may carry) from the class names among its values. `AutoModelForMultimodalLM.register`
# does not fill it and transformers has no public way to, so the configuration module, which the server imports (via
# `AutoConfig`, also as remote code without storm_hf) before it looks, adds STORM to it.
MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES.setdefault(StormConfig.model_type, "StormForConditionalGeneration")


__all__ = ["StormConfig"]
