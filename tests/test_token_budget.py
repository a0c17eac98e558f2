"""Token and memory accounting (`storm_hf.accounting`) against numbers worked out by hand for the paper's 7B config,
and the `max_visual_tokens` policy (`frames_within_budget`) against the token-count primitive."""

import itertools
import math

import pytest
from transformers import Qwen2Config

from storm_hf import StormConfig, accounting, num_visual_tokens
from storm_hf.processing import FramePlan, frames_within_budget, visual_token_grid


PAPER = StormConfig()  # SigLIP 448 px / patch 14, 2x2 pixel-shuffle, T.Pool 4, Qwen2-7B


def test_visual_tokens_of_the_papers_7b_config():
    # 448 / 14 = 32 patches a side -> 2x2 pixel-shuffle -> 16 x 16 = 256 tokens per frame.
    assert accounting.video_tokens(PAPER, 1, temporal_pool_size=1) == 256
    # 128 frames, no compression: 128 x 256.
    assert accounting.video_tokens(PAPER, 128, temporal_pool_size=1) == 32768
    # 128 frames, T.Pool k=4 (the config's): 128 / 4 = 32 pooled frames x 256 = the paper's 8K budget.
    assert accounting.video_tokens(PAPER, 128) == 8192
    # 256 frames, T.Pool k=4 + T.Sampling s=2: 64 pooled frames, every 2nd kept = 32 x 256.
    assert accounting.video_tokens(PAPER, 256, temporal_sampling_stride=2) == 8192
    # 32 frames, all three: 8 pooled, spatial 2x2 -> 8 x 8 = 64 tokens a frame, every 2nd of 8 = 4 x 64.
    assert accounting.video_tokens(PAPER, 32, spatial_pool_size=2, temporal_sampling_stride=2) == 256
    # A last, shorter pooling group still makes a frame: 130 frames -> ceil(130 / 4) = 33 x 256.
    assert accounting.video_tokens(PAPER, 130) == 8448
    assert visual_token_grid(128, 448, 448, patch_size=14, temporal_pool_size=4) == (32, 16, 16)


def test_kv_cache_and_activation_bytes_of_qwen2_7b():
    # Qwen2-7B: 28 layers, 4 key-value heads, head_dim = 3584 / 28 = 128; K and V in bf16 (2 bytes).
    assert accounting.head_dim(PAPER.text_config) == 128
    assert accounting.kv_cache_bytes_per_token(PAPER) == 2 * 28 * 4 * 128 * 2 == 57344
    # An 8192-token prompt: 57344 x 8192 bytes = 448 MiB; in float32 twice that.
    assert accounting.kv_cache_bytes(PAPER, 8192) == 469_762_048 == 448 * 2**20
    assert accounting.kv_cache_bytes(PAPER, 8192, dtype_bytes=4) == 896 * 2**20
    # Prefill estimate: MLP gate + up (2 x 18944) and 4 residual copies (4 x 3584), bf16.
    assert accounting.prefill_activation_bytes_per_token(PAPER) == (2 * 18944 + 4 * 3584) * 2 == 104448


def test_head_dim_follows_qwen2_attention():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

    for config in (
        Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2),
        Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    ):
        attention = Qwen2Attention(config, layer_idx=0)
        assert accounting.head_dim(config) == attention.head_dim == attention.k_proj.out_features // 2


def test_compression_labels():
    assert accounting.compression_label() == "none"
    assert accounting.compression_label(4) == "T.Pool k=4"
    assert accounting.compression_label(4, 1, 2) == "T.Pool k=4 + T.Sampling s=2"
    assert accounting.compression_label(4, 2, 2) == "T.Pool k=4 + S.Pool 2x2 + T.Sampling s=2"
    assert accounting.compression_label(**accounting.NO_COMPRESSION) == "none"
    config = StormConfig(temporal_pool_size=2, spatial_pool_size=4, temporal_sampling_stride=2)
    label = accounting.compression_label(**accounting.compression_of(config))
    assert label == "T.Pool k=2 + S.Pool 4x4 + T.Sampling s=2"
    assert accounting.compression_of(config, temporal_sampling_stride=1)["temporal_sampling_stride"] == 1


def test_compression_settings_are_read_from_the_config_in_one_place():
    """The video processor `build_processor` makes counts with the config's token-grid settings and stride, and
    `video_tokens` takes exactly the compression settings (a misspelt one raises rather than being ignored)."""
    from storm_hf.conversion.processor import build_processor
    from storm_hf.processing.token_budget import TOKEN_GRID_SETTINGS
    from storm_hf.synthetic import build_task_tokenizer

    config = StormConfig(
        vision_config={"model_type": "siglip_vision_model", "image_size": 64, "patch_size": 8},
        downsample_ratio=1,
        temporal_pool_size=3,
        spatial_pool_size=2,
        temporal_sampling_stride=2,
    )
    video_processor = build_processor(build_task_tokenizer(), config).video_processor
    assert {name: getattr(video_processor, name) for name in TOKEN_GRID_SETTINGS} == {
        "patch_size": 8,
        "downsample_ratio": 1,
        "temporal_pool_size": 3,
        "spatial_pool_size": 2,
    }
    assert video_processor.temporal_sampling_stride == 2
    # 10 frames -> ceil(10 / 3) = 4 pooled, every 2nd kept = 2 frames of (8 / 2) x (8 / 2) tokens.
    assert math.prod(video_processor.token_grid(10, 64, 64, temporal_sampling_stride=2)) == 2 * 16
    assert accounting.video_tokens(config, 10) == 2 * 16
    assert accounting.video_tokens(config, 10, **accounting.NO_COMPRESSION) == 10 * 64
    with pytest.raises(TypeError, match="spatial_pool"):
        accounting.video_tokens(config, 10, spatial_pool=1)


def plan_7b(budget, total_frames, fps, **kwargs):
    return frames_within_budget(
        budget,
        total_frames=total_frames,
        duration=total_frames / fps,
        tokens_per_frame=256,
        temporal_pool_size=4,
        **kwargs,
    )


def test_budget_policy_on_a_10_second_and_a_1_hour_clip_at_paper_scale():
    # 8192 tokens = 32 pooled frames of 256 tokens = 128 frames at stride 1.
    # 10 s at 30 fps (300 frames): 128 frames are 12.8 per second, dense enough: stride 1.
    assert plan_7b(8192, 300, 30.0) == FramePlan(128, 1)
    # 1 hour at 30 fps: 128 frames would be one every 28 s; 256 frames with stride 2 cost the same 8192 tokens.
    assert plan_7b(8192, 108_000, 30.0) == FramePlan(256, 2)
    # A 4 s clip of 100 frames fits whole at stride 1; no frame is repeated to fill the budget.
    assert plan_7b(8192, 100, 25.0) == FramePlan(100, 1)
    # The switch is at 1 frame per second: 128 frames over 128 s keep stride 1, over 129 s not.
    assert plan_7b(8192, 128 * 30, 30.0) == FramePlan(128, 1)
    assert plan_7b(8192, 129 * 30, 30.0) == FramePlan(256, 2)
    # Stride 2 on a video shorter than 256 frames takes all of them.
    assert plan_7b(8192, 200, 1.0) == FramePlan(200, 2)
    # A stride given by the caller is kept; `max_frames` caps; an unknown duration keeps stride 1.
    assert plan_7b(8192, 108_000, 30.0, temporal_sampling_stride=4) == FramePlan(512, 4)
    assert plan_7b(8192, 108_000, 30.0, max_frames=64) == FramePlan(64, 1)
    unknown = frames_within_budget(8192, total_frames=1000, duration=None, tokens_per_frame=256, temporal_pool_size=4)
    assert unknown == FramePlan(128, 1)


def test_budget_policy_never_exceeds_the_budget():
    for budget, total, fps, pool, (height, width) in itertools.product(
        (4, 7, 64, 100, 8192), (1, 3, 17, 100, 3600), (1.0, 30.0), (1, 2, 4), ((56, 56), (56, 84))
    ):
        tokens_per_frame = num_visual_tokens(1, height, width, patch_size=14)
        if budget < tokens_per_frame:
            continue
        plan = frames_within_budget(
            budget, total_frames=total, duration=total / fps, tokens_per_frame=tokens_per_frame, temporal_pool_size=pool
        )
        tokens = num_visual_tokens(
            plan.num_frames,
            height,
            width,
            patch_size=14,
            temporal_pool_size=pool,
            temporal_sampling_stride=plan.temporal_sampling_stride,
        )
        assert 1 <= plan.num_frames <= total and tokens <= budget, (budget, total, fps, pool, plan, tokens)


def test_budget_below_one_pooled_frame_raises():
    with pytest.raises(ValueError, match=r"max_visual_tokens=255.*below the 256 tokens of a single pooled frame"):
        plan_7b(255, 300, 30.0)
    with pytest.raises(ValueError, match="temporal_sampling_stride"):
        plan_7b(8192, 300, 30.0, temporal_sampling_stride=0)


def test_language_model_parameters_and_memory_of_qwen2_7b():
    # Qwen2-7B by hand: embedding and untied LM head (152064 x 3584 each), 28 layers of attention (q and o 3584 x 3584,
    # k and v 3584 x 512, biases on q, k, v), MLP (3 x 3584 x 18944) and two norms, and the final norm.
    hidden, intermediate, vocab, kv_width = 3584, 18944, 152064, 4 * 128
    layer = 2 * hidden * hidden + 2 * hidden * kv_width + hidden + 2 * kv_width + 3 * hidden * intermediate + 2 * hidden
    parameters = 2 * vocab * hidden + 28 * layer + hidden
    assert accounting.parameter_counts(PAPER)["language model"] == parameters == 7_615_616_512
    memory = accounting.language_model_memory(PAPER, 8192 + 64)
    assert memory.weights == 2 * parameters
    assert memory.kv_cache == 2 * 28 * 4 * 128 * (8192 + 64) * 2
    assert memory.prefill_activations == 104448 * (8192 + 64)
    assert memory.total == memory.weights + memory.kv_cache + memory.prefill_activations
    assert accounting.language_model_memory(PAPER, 100, 4, num_parameters=10).weights == 40


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_parameter_counts_partition_a_built_model(tie_word_embeddings):
    import torch
    from modeling_utils import tiny_config
    from transformers import Qwen2ForCausalLM

    from storm_hf import StormForConditionalGeneration

    config = tiny_config(tie_word_embeddings=tie_word_embeddings)
    counts = accounting.parameter_counts(config)
    torch.manual_seed(0)
    model = StormForConditionalGeneration(config)  # allocated, unlike the meta-device model the counts come from
    assert sum(counts.values()) == sum(parameter.numel() for parameter in model.parameters())
    config.text_config.tie_word_embeddings = tie_word_embeddings
    language_model = Qwen2ForCausalLM(config.text_config)
    assert counts["language model"] == sum(parameter.numel() for parameter in language_model.parameters())
