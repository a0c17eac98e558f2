"""Tiny random STORM models and model inputs for the tests (no tokenizer, no Hub)."""

import torch

from storm_hf import StormConfig, StormForConditionalGeneration, accounting


IMAGE_TOKEN_ID = 120
VIDEO_TOKEN_ID = 121
PAD_TOKEN_ID = 0
IMAGE_SIZE = 56
PATCH_SIZE = 14


def tiny_config(**overrides) -> StormConfig:
    """A STORM config small enough for CPU tests: 4x4 patches -> 2x2 tokens per frame, 64-wide LLM."""
    settings = dict(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=PAD_TOKEN_ID,
            eos_token_id=None,
        ),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        mamba_num_layers=2,
        mamba_state_size=4,
        temporal_pool_size=2,
        spatial_pool_size=1,
    )
    settings.update(overrides)
    return StormConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> StormForConditionalGeneration:
    torch.manual_seed(seed)
    return StormForConditionalGeneration(tiny_config(**overrides)).eval()


def tiny_model_for(processor, seed: int = 0, **overrides) -> StormForConditionalGeneration:
    """`tiny_model` with `processor`'s tokenizer: its vocabulary size, pad token and placeholder token ids."""
    config = tiny_config(image_token_id=processor.image_token_id, video_token_id=processor.video_token_id, **overrides)
    config.text_config.vocab_size = len(processor.tokenizer)
    config.text_config.pad_token_id = processor.tokenizer.pad_token_id
    torch.manual_seed(seed)
    return StormForConditionalGeneration(config).eval()


def video_tokens(config: StormConfig, num_frames: int, stride: int = 1) -> int:
    return accounting.video_tokens(config, num_frames, temporal_sampling_stride=stride)


def video_inputs(config, videos_per_sample: list[list[int]], stride: int = 1, text_length: int = 3, seed: int = 0):
    """Left-padded inputs for samples holding videos of the given frame counts (an empty list: text only).

    Each sample is `text_length` random tokens, then each video's placeholders, then `text_length` more tokens.
    """
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    prompts = []
    for frame_counts in videos_per_sample:
        text = lambda: torch.randint(1, IMAGE_TOKEN_ID, (text_length,), generator=generator).tolist()  # noqa: E731
        ids = text()
        for frames in frame_counts:
            ids += [VIDEO_TOKEN_ID] * video_tokens(config, frames, stride) + text()
        prompts.append(ids)
    longest = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[PAD_TOKEN_ID] * (longest - len(ids)) + ids for ids in prompts])
    attention_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    max_frames = max(sum(counts) for counts in videos_per_sample)
    if max_frames:
        max_videos = max(len(counts) for counts in videos_per_sample)
        inputs["pixel_values_videos"] = torch.zeros(len(prompts), max_frames, 3, size, size)
        inputs["video_num_frames"] = torch.zeros(len(prompts), max_videos, dtype=torch.long)
        for sample, counts in enumerate(videos_per_sample):
            total = sum(counts)
            inputs["pixel_values_videos"][sample, :total] = torch.randn(total, 3, size, size, generator=generator)
            inputs["video_num_frames"][sample, : len(counts)] = torch.tensor(counts, dtype=torch.long)
        inputs["temporal_sampling_stride"] = torch.full((len(prompts),), stride)
    return inputs


def unpad_sample(inputs: dict, sample: int) -> dict:
    """The inputs of one sample alone, without padding."""
    keep = inputs["attention_mask"][sample].bool()
    single = {
        "input_ids": inputs["input_ids"][sample, keep][None],
        "attention_mask": inputs["attention_mask"][sample, keep][None],
    }
    if "video_num_frames" in inputs:
        counts = inputs["video_num_frames"][sample]
        counts = counts[counts > 0]
        if len(counts):
            single["pixel_values_videos"] = inputs["pixel_values_videos"][sample, : int(counts.sum())][None]
            single["video_num_frames"] = counts[None]
            single["temporal_sampling_stride"] = inputs["temporal_sampling_stride"][sample : sample + 1]
    return single
