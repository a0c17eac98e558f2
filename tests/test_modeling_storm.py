import collections
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch
from huggingface_hub.dataclasses import StrictDataclassClassValidationError
from modeling_utils import IMAGE_SIZE, IMAGE_TOKEN_ID, tiny_config, tiny_model, unpad_sample, video_inputs, video_tokens
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
)

from storm_hf import StormConfig, StormForConditionalGeneration, StormModel
from storm_hf.modeling.modeling_storm import (
    StormMambaMixer,
    StormPixelShuffle,
    reverse_sequences,
    spatial_pool,
    temporal_pool,
    temporal_sample,
)
from storm_hf.modeling.selective_scan import is_mamba_ssm_available, selective_scan_reference


# ---------------------------------------------------------------- config


def test_default_config_is_the_papers_7b_model():
    config = StormConfig()
    assert config.vision_config.model_type == "siglip_vision_model"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (448, 14)
    assert config.vision_config.hidden_size == 1152
    assert config.text_config.model_type == "qwen2" and config.text_config.hidden_size == 3584
    assert config.vision_feature_layer == -2
    assert (config.temporal_pool_size, config.spatial_pool_size, config.temporal_sampling_stride) == (4, 1, 1)
    assert config.merged_grid_size == 16
    assert config.mamba_time_step_rank == 3584 // 16


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"temporal_pool_size": 0}, "temporal_pool_size"),
        ({"spatial_pool_size": 0}, "spatial_pool_size"),
        ({"temporal_sampling_stride": 0}, "temporal_sampling_stride"),
        ({"mamba_num_layers": -1}, "mamba_num_layers"),
        ({"spatial_pool_size": 3}, "does not divide the 2x2 token grid"),
        ({"vision_feature_layer": -4}, "vision_feature_layer"),
    ],
)
def test_impossible_config_values_raise_at_construction(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(**overrides)


def test_zero_mamba_layers_is_a_linear_projector_with_independent_frames():
    model = tiny_model(mamba_num_layers=0, temporal_pool_size=1)
    assert len(model.model.temporal_projector.layers) == 0
    inputs = video_inputs(model.config, [[4]])
    with torch.no_grad():
        features = model.get_video_features(inputs["pixel_values_videos"], inputs["video_num_frames"]).pooler_output[0]
        reversed_features = model.get_video_features(
            inputs["pixel_values_videos"].flip(1), inputs["video_num_frames"]
        ).pooler_output[0]
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    tokens_per_frame = model.config.merged_grid_size**2
    # no frame sees another: reversing the frames reverses the per-frame token blocks
    torch.testing.assert_close(
        features.unflatten(0, (4, tokens_per_frame)).flip(0), reversed_features.unflatten(0, (4, -1))
    )


def test_auto_classes_resolve_storm():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("storm"), StormConfig)
    assert type(AutoModel.from_config(config)) is StormModel
    assert type(AutoModelForImageTextToText.from_config(config)) is StormForConditionalGeneration
    assert type(AutoModelForMultimodalLM.from_config(config)) is StormForConditionalGeneration


# ---------------------------------------------------------------- building blocks


def test_pixel_shuffle_matches_explicit_windows_and_pads_odd_grids():
    features = torch.randn(2, 5, 3, 4)
    shuffled = StormPixelShuffle(2)(features)
    assert shuffled.shape == (2, 3, 2, 16)
    padded = torch.zeros(2, 6, 4, 4)
    padded[:, :5, :3] = features
    for row, column in itertools.product(range(3), range(2)):
        window = padded[:, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2]  # (2, 2, 2, C) raster order
        torch.testing.assert_close(shuffled[:, row, column], window.reshape(2, -1), rtol=0, atol=0)


def test_pooling_operators_against_explicit_means():
    tokens = torch.randn(7, 4, 4, 3)
    pooled = temporal_pool(tokens, 3)
    expected = torch.stack([tokens[0:3].mean(0), tokens[3:6].mean(0), tokens[6:7].mean(0)])
    torch.testing.assert_close(pooled, expected)
    spatial = spatial_pool(tokens, 2)
    torch.testing.assert_close(spatial[:, 1, 0], tokens[:, 2:4, 0:2].mean(dim=(1, 2)))
    assert torch.equal(temporal_sample(tokens, 3), tokens[[0, 3, 6]])


def test_reverse_sequences_keeps_padding_in_place():
    x = torch.arange(10.0).reshape(2, 5, 1)
    reversed_ = reverse_sequences(x, torch.tensor([5, 3]))
    assert reversed_[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert reversed_[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    assert torch.equal(reverse_sequences(reversed_, torch.tensor([5, 3])), x)


def _initialised_mixer(bidirectional: bool, inference_chunk_length: int | None = None) -> StormMambaMixer:
    model = tiny_model(mamba_bidirectional=bidirectional, mamba_inference_chunk_length=inference_chunk_length)
    return model.model.temporal_projector.layers[0].mixer


def _reference_mixer_output(mixer: StormMambaMixer, hidden_states: torch.Tensor) -> torch.Tensor:
    """The mixer written out in mamba-ssm's channel-major layout: conv1d, the token-loop scan, flips for the
    backward direction (Vision Mamba's bimamba v2)."""
    x, gate = mixer.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
    directions = [(lambda tensor: tensor, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)]
    if mixer.bidirectional:
        flip = lambda tensor: tensor.flip(-1)  # noqa: E731
        directions.append((flip, mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b))
    output = 0
    for flip, conv1d, x_proj, dt_proj, A_log, D in directions:
        u = torch.nn.functional.silu(conv1d(torch.nn.functional.pad(flip(x), (mixer.conv_kernel - 1, 0))))
        time_step, B, C = x_proj(u.transpose(1, 2)).split(
            [mixer.time_step_rank, mixer.state_size, mixer.state_size], dim=-1
        )
        y = selective_scan_reference(
            u,
            (time_step @ dt_proj.weight.T).transpose(1, 2),
            -torch.exp(A_log),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D,
            flip(gate),
            dt_proj.bias,
            delta_softplus=True,
        )
        output = output + flip(y)
    return mixer.out_proj(output.transpose(1, 2))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_mixer_matches_a_channel_major_reference(bidirectional):
    mixer = _initialised_mixer(bidirectional)
    torch.manual_seed(0)
    hidden_states = torch.randn(2, 150, 64)  # longer than one scan chunk
    with torch.no_grad():
        torch.testing.assert_close(
            mixer(hidden_states)[0], _reference_mixer_output(mixer, hidden_states), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("bidirectional", [True, False])
def test_mixer_never_mixes_padding_or_neighbouring_sequences(bidirectional):
    mixer = _initialised_mixer(bidirectional)
    torch.manual_seed(0)
    long, short = torch.randn(1, 11, 64), torch.randn(1, 6, 64)
    batch = torch.zeros(2, 11, 64)
    batch[0], batch[1, :6] = long[0], short[0]
    batch[1, 6:] = 100.0  # garbage in the padding must not leak into real tokens
    output, _ = mixer(batch, lengths=torch.tensor([11, 6]))
    torch.testing.assert_close(output[0:1], mixer(long)[0])
    torch.testing.assert_close(output[1:2, :6], mixer(short)[0])


def test_bidirectional_mixer_sees_the_future_and_causal_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 12, 64)
    changed = x.clone()
    changed[:, -1] += 1.0
    for bidirectional, first_token_changes in ((True, True), (False, False)):
        mixer = _initialised_mixer(bidirectional)
        difference = (mixer(x)[0][:, 0] - mixer(changed)[0][:, 0]).abs().max()
        assert (difference > 1e-6) == first_token_changes


@pytest.mark.parametrize("grad", [True, False])  # the whole-sequence scan, the scan in chunks of 3 positions
def test_causal_mixer_carries_its_state_across_calls(grad):
    mixer = _initialised_mixer(bidirectional=False, inference_chunk_length=3)
    torch.manual_seed(0)
    x = torch.randn(2, 17, 64)
    with torch.set_grad_enabled(grad):
        full, _ = mixer(x)
        first, state = mixer(x[:, :7])
        second, state = mixer(x[:, 7:12], state=state)
        third, _ = mixer(x[:, 12:], state=state)
    torch.testing.assert_close(torch.cat([first, second, third], dim=1), full)


def test_bidirectional_mixer_rejects_a_streaming_state():
    mixer = _initialised_mixer(bidirectional=False)
    _, state = mixer(torch.randn(1, 4, 64))
    with pytest.raises(ValueError, match="mamba_bidirectional=False"):
        _initialised_mixer(bidirectional=True)(torch.randn(1, 4, 64), state=state)


# ---------------------------------------------------------------- token counting


@pytest.mark.parametrize("temporal_pool_size, spatial_pool_size", [(1, 1), (2, 1), (4, 1), (3, 2), (4, 2)])
def test_token_count_function_equals_tokens_produced(temporal_pool_size, spatial_pool_size):
    model = tiny_model(
        temporal_pool_size=temporal_pool_size,
        spatial_pool_size=spatial_pool_size,
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=112,
            patch_size=14,
            vision_use_head=False,
        ),
    )
    for num_frames, stride in itertools.product([1, 2, 3, 5, 8, 9], [1, 2, 3]):
        pixels = torch.randn(1, num_frames, 3, 112, 112)
        features = model.get_video_features(pixels, temporal_sampling_stride=stride).pooler_output
        assert features[0].shape[0] == video_tokens(model.config, num_frames, stride), (num_frames, stride)


# ---------------------------------------------------------------- model behaviour


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model()
    inputs = video_inputs(model.config, [[3]])
    model.save_pretrained(tmp_path)
    loaded, info = StormForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(auto) is StormForConditionalGeneration


def test_greedy_generate_with_and_without_cache_are_equal():
    model = tiny_model()
    inputs = video_inputs(model.config, [[5], [2, 3]])
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_with_different_frame_counts_equals_each_sample_alone():
    model = tiny_model()
    inputs = video_inputs(model.config, [[7], [2], [3, 4], []], text_length=4)
    batched = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    for sample in range(4):
        alone = model.generate(**unpad_sample(inputs, sample), max_new_tokens=6, do_sample=False)
        assert batched[sample, prompt_length:].tolist() == alone[0, -6:].tolist(), sample


def test_beam_search_expands_visual_inputs_per_sample():
    model = tiny_model()
    inputs = video_inputs(model.config, [[3], [5, 2]])
    settings = dict(max_new_tokens=4, do_sample=False, num_beams=3, num_return_sequences=2)
    batched = model.generate(**inputs, **settings)
    for sample in range(2):
        alone = model.generate(**unpad_sample(inputs, sample), **settings)
        assert batched[2 * sample : 2 * sample + 2, -4:].tolist() == alone[:, -4:].tolist()


def test_vision_features_are_computed_once_during_generate():
    model = tiny_model()
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    model.generate(**video_inputs(model.config, [[3]]), max_new_tokens=5, do_sample=False)
    assert len(calls) == 1


def _operations_per_decode_step(model, inputs: dict) -> collections.Counter:
    """The aten operations (name -> calls) of one greedy decode step: those of a 9-token `generate` minus those of a
    3-token one, over 6 (the prefill and the first step cancel)."""

    def operations(new_tokens):
        with torch.no_grad(), torch.profiler.profile() as profiler:
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return collections.Counter({event.key: event.count for event in profiler.key_averages()})

    longer, shorter = operations(9), operations(3)
    assert all(count % 6 == 0 for count in (longer - shorter).values())
    return collections.Counter({name: count // 6 for name, count in (longer - shorter).items()})


def test_a_decode_step_runs_exactly_the_operations_of_the_language_model_alone():
    """STORM adds nothing to a decode step (no placeholder check, host sync such as `.item()`, cache copy or dtype
    cast): after the prefill, each generated token runs the aten operations of its language model generating alone
    from a text prompt of the same length, as many times each."""
    model = tiny_model()
    language_model = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    storm_inputs = video_inputs(model.config, [[4]])
    text_ids = torch.randint(1, IMAGE_TOKEN_ID, storm_inputs["input_ids"].shape)
    text_inputs = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    assert _operations_per_decode_step(model, storm_inputs) == _operations_per_decode_step(language_model, text_inputs)


def test_images_videos_and_text_only_samples_in_one_batch_equal_each_sample_alone():
    model = tiny_model()
    inputs = video_inputs(model.config, [[3], [], []])  # a video, then two text-only samples
    tokens_per_image = video_tokens(model.config, 1)
    image_prompt = torch.tensor([9, 8, 7] + [IMAGE_TOKEN_ID] * tokens_per_image + [5, 6])  # sample 1 holds an image
    inputs["input_ids"][1, -len(image_prompt) :] = image_prompt
    inputs["attention_mask"][1, -len(image_prompt) :] = 1
    inputs["pixel_values"] = torch.zeros(3, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    inputs["pixel_values"][1, 0] = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    inputs["num_images"] = torch.tensor([0, 1, 0])
    alone = [unpad_sample(inputs, 0), unpad_sample(inputs, 1), unpad_sample(inputs, 2)]
    alone[1].update(pixel_values=inputs["pixel_values"][1:2], num_images=torch.tensor([1]))
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding shifts no position
    with torch.no_grad():
        batched = model(**inputs, position_ids=positions)
        references = [model(**sample) for sample in alone]
    for sample, reference in enumerate(references):
        keep = inputs["attention_mask"][sample].bool()
        torch.testing.assert_close(batched.logits[sample, keep], reference.logits[0], msg=lambda m: f"{sample}: {m}")
    torch.testing.assert_close(batched.image_hidden_states, references[1].image_hidden_states)
    torch.testing.assert_close(batched.video_hidden_states, references[0].video_hidden_states)
    answers = model.generate(**inputs, max_new_tokens=4, do_sample=False)[:, -4:]
    for sample, single in enumerate(alone):
        assert answers[sample].tolist() == model.generate(**single, max_new_tokens=4, do_sample=False)[0, -4:].tolist()


@pytest.mark.parametrize("kind", ["video", "image"])
def test_placeholder_count_mismatch_names_both_counts(kind):
    model = tiny_model()
    inputs = video_inputs(model.config, [[3]])
    expected = video_tokens(model.config, 3)
    if kind == "video":
        inputs["input_ids"][0, -1] = model.config.video_token_id  # one placeholder too many
        match = f"{expected + 1} video placeholder tokens .* produce {expected} tokens"
    else:
        inputs["pixel_values"] = torch.randn(1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
        match = f"0 image placeholder tokens .* produce {video_tokens(model.config, 1)} tokens"
    with pytest.raises(ValueError, match=match):
        model(**inputs)


def test_sampling_stride_disagreement_raises():
    model = tiny_model()
    inputs = video_inputs(model.config, [[8]], stride=1)
    inputs["temporal_sampling_stride"] = torch.tensor([2])
    with pytest.raises(ValueError, match="video placeholder tokens"):
        model(**inputs)


def test_temporal_sampling_is_test_time_only():
    model = tiny_model().train()
    with pytest.raises(ValueError, match="test-time"):
        model(**video_inputs(model.config, [[8]], stride=2))


def _loss_and_grads(model, inputs):
    model.zero_grad()
    output = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
    output.loss.backward()
    return output.loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _training_inputs(model):
    inputs = video_inputs(model.config, [[3], [5, 2]], text_length=6)
    tokens_per_image = video_tokens(model.config, 1)
    inputs["input_ids"][:, -tokens_per_image:] = IMAGE_TOKEN_ID
    inputs["pixel_values"] = torch.randn(2, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return inputs


def test_loss_is_finite_and_backward_reaches_every_parameter():
    model = tiny_model().train()
    loss, grads = _loss_and_grads(model, _training_inputs(model))
    assert torch.isfinite(loss)
    # The vision layers after `vision_feature_layer` and the post-layernorm are not built: nothing is left unused.
    assert model.config.vision_config.num_hidden_layers == 2 and len(model.model.vision_tower.encoder.layers) == 1
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in grads]
    assert not missing
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for name, g in grads.items() if "A_b_log" in name)


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    inputs = _training_inputs(model)
    loss, grads = _loss_and_grads(model, inputs)
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.model.temporal_projector.layers)
    loss_checkpointed, grads_checkpointed = _loss_and_grads(model, inputs)
    torch.testing.assert_close(loss_checkpointed, loss)
    assert grads.keys() == grads_checkpointed.keys()
    for name in grads:
        torch.testing.assert_close(grads_checkpointed[name], grads[name], msg=name)


def test_sdpa_by_default_and_bfloat16_loading(tmp_path):
    """Loading in bf16 gives bf16 weights and logits; their accuracy is tested against float64 in test_precision.py."""
    model = tiny_model()
    assert model.config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    bf16 = StormForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    inputs = video_inputs(model.config, [[3]])
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].bfloat16()
    with torch.no_grad():
        assert bf16(**inputs).logits.dtype == torch.bfloat16


def test_trust_remote_code_loading_without_storm_hf(tmp_path):
    model = tiny_model()
    inputs = video_inputs(model.config, [[3]])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_storm.StormConfig",
        "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_storm.StormForConditionalGeneration",
    }
    with torch.no_grad():  # as the loaded model runs: inference scans in chunks, training at once (equal to rounding)
        torch.save({"inputs": inputs, "logits": model(**inputs).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["storm_hf"] = None  # storm_hf is not importable in this process
        import torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert "storm_hf" not in type(model).__module__, type(model).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(model(**expected["inputs"]).logits, expected["logits"], rtol=0, atol=0)
        print("REMOTE-OK", type(model).__module__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "REMOTE-OK" in result.stdout, result.stderr[-3000:]


def _left_padded(pixels: torch.Tensor) -> torch.Tensor:
    """3 frames then 3 zero frames -> 9 zero frames then the 3 frames: more padding than frames, so the entry after
    the counted frames is still a zero (only the last entry shows the left padding)."""
    return torch.cat([torch.zeros_like(pixels), pixels.roll(3, dims=1)], dim=1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda inputs: inputs.update(pixel_values_videos=inputs["pixel_values_videos"][0]), "must be batch-major"),
        (lambda inputs: inputs.update(temporal_sampling_stride=torch.tensor([0])), "temporal_sampling_stride"),
        (lambda inputs: inputs.update(video_num_frames=torch.tensor([[9]])), "exceed"),
        (lambda inputs: inputs.update(pixel_values_videos=inputs["pixel_values_videos"].roll(1, dims=1)), "at the END"),
        (lambda inputs: inputs.update(pixel_values_videos=_left_padded(inputs["pixel_values_videos"])), "at the END"),
    ],
)
def test_malformed_visual_inputs_raise_clear_errors(change, message):
    model = tiny_model()
    inputs = video_inputs(model.config, [[3]])
    inputs["pixel_values_videos"] = torch.cat(
        [inputs["pixel_values_videos"], torch.zeros_like(inputs["pixel_values_videos"])], 1
    )
    change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and is_mamba_ssm_available), reason="needs CUDA and mamba-ssm (the `[cuda]` extra)"
)
def test_mamba_ssm_kernels_and_pytorch_scan_agree_on_the_same_checkpoint():
    model = tiny_model()
    inputs = video_inputs(model.config, [[5], [2, 3]])
    with torch.no_grad():
        reference = model(**inputs).logits
        cuda_inputs = {name: tensor.cuda() for name, tensor in inputs.items()}
        kernel = model.cuda()(**cuda_inputs).logits.cpu()
    torch.testing.assert_close(kernel, reference, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- bounded vision encoding


@pytest.mark.parametrize("vision_use_head", [False, True])
def test_vision_tower_is_built_only_up_to_the_feature_layer_and_the_config_keeps_the_whole_tower(vision_use_head):
    config = StormConfig()  # the paper's 7B: SigLIP-so400m, 27 layers, features of layer -2
    config.vision_config.vision_use_head = vision_use_head  # a SigLIP checkpoint's config may have the pooling head
    with torch.device("meta"):
        model = StormModel(config)
    assert model.vision_tower.config is config.vision_config  # the tower follows later edits of the config
    assert len(model.vision_tower.encoder.layers) == config.num_vision_layers_used == 26
    assert isinstance(model.vision_tower.post_layernorm, torch.nn.Identity)
    assert not hasattr(model.vision_tower, "head") and not model.vision_tower.use_head
    assert not any("post_layernorm" in name or ".head." in name for name in model.state_dict())
    assert config.vision_config.num_hidden_layers == 27 and config.vision_config.vision_use_head == vision_use_head
    assert StormConfig.from_dict(config.to_dict()).vision_config.num_hidden_layers == 27


def test_truncated_tower_gives_the_full_siglip_hidden_state_of_the_feature_layer():
    from transformers import SiglipVisionModel

    model = tiny_model(vision_config={**tiny_config().vision_config.to_dict(), "num_hidden_layers": 3})
    full = SiglipVisionModel(model.config.vision_config).eval()
    missing, unexpected = full.load_state_dict(model.model.vision_tower.state_dict(), strict=False)
    assert all(key.startswith(("encoder.layers.2.", "post_layernorm.")) for key in missing) and not unexpected
    frames = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = full(frames, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
        features = model.model.get_frame_features(frames)
    assert torch.equal(features.flatten(1, 2), expected)


@pytest.mark.parametrize("grad", [False, True])
def test_micro_batched_vision_features_equal_all_at_once_exactly(grad):
    model = tiny_model(vision_config={**tiny_config().vision_config.to_dict(), "num_hidden_layers": 3})
    frames = torch.randn(7, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.set_grad_enabled(grad):
        all_at_once = model.model.get_frame_features(frames, vision_batch_size=7)
        for batch_size in (1, 3, 4, 16):  # 3 and 4 do not divide 7 frames
            calls = []
            features = model.model.get_frame_features(
                frames,
                vision_batch_size=batch_size,
                progress_callback=lambda *done_total, sink=calls: sink.append(done_total),
            )
            assert torch.equal(features, all_at_once), batch_size
            expected_calls = [(min(end, 7), 7) for end in range(batch_size, 7 + batch_size, batch_size)]
            assert calls == expected_calls


def test_inference_projects_each_vision_micro_batch_and_equals_the_all_at_once_path_exactly():
    """Without the vision features (`return_frame_features=False`, what forward uses), at inference each vision
    micro-batch goes through pixel-shuffle and Linear as soon as the tower gives it (only projector-width tokens are
    kept for all frames); the compressed tokens equal those of all frames' features projected in one call, exactly in
    float32. With gradients, and when the features are returned, they are projected in one call, as in training."""
    model = tiny_model(vision_config={**tiny_config().vision_config.to_dict(), "num_hidden_layers": 3})
    core = model.model
    inputs = video_inputs(model.config, [[7], [3, 2]])
    pixels, counts = inputs["pixel_values_videos"], inputs["video_num_frames"]
    sizes, project_frames = [], core.temporal_projector.project_frames

    def counted_project_frames(features):  # keeps no reference to the features
        sizes.append(features.shape[0])
        return project_frames(features)

    def frames_per_projection() -> list[int]:
        """Frames of each call of the projector's pixel-shuffle + Linear since the last check."""
        calls = sizes.copy()
        sizes.clear()
        return calls

    core.temporal_projector.project_frames = counted_project_frames

    # the tower's output of each micro-batch, and how many of them are still alive when the Mamba layers run
    tower_outputs, alive_at_mamba = [], []
    core.vision_tower.register_forward_hook(
        lambda module, args, output: tower_outputs.append(weakref.ref(output.last_hidden_state))
    )
    core.temporal_projector.layers[0].register_forward_pre_hook(
        lambda module, args: alive_at_mamba.append(sum(ref() is not None for ref in tower_outputs))
    )
    with torch.no_grad():
        frames = torch.cat([pixels[0, :7], pixels[1, :5]])
        features = core.get_frame_features(frames, vision_batch_size=12)  # all 12 frames in one tower call
        projected, _ = core.temporal_projector(features, [7, 3, 2])
        expected = [core.token_compressor(video) for video in projected]
        frames_per_projection()
        for batch_size in (1, 4, 5, 12, 16):  # 5 does not divide 12 frames
            pooled = core.get_video_features(
                pixels, counts, vision_batch_size=batch_size, return_frame_features=False
            ).pooler_output
            assert [video.shape for video in pooled] == [video.shape for video in expected]
            assert all(torch.equal(*pair) for pair in zip(pooled, expected)), batch_size
            assert frames_per_projection() == [min(batch_size, 12 - start) for start in range(0, 12, batch_size)]
            assert alive_at_mamba[-1] == 0  # no vision features kept
        core.get_video_features(pixels, counts, vision_batch_size=5)  # returns the features: projected at once
        assert frames_per_projection() == [12]
        model(**inputs, vision_batch_size=5)  # forward (and so generate) keeps no features
        assert frames_per_projection() == [5, 5, 2]
    pooled = core.get_video_features(pixels, counts, vision_batch_size=5, return_frame_features=False).pooler_output
    assert frames_per_projection() == [12]
    torch.testing.assert_close(pooled, tuple(expected))  # the training path (its scan may round differently)


def test_vision_batch_size_reaches_the_tower_from_forward_and_generate_and_changes_nothing():
    model = tiny_model()
    inputs = video_inputs(model.config, [[5], [3]])
    batch_sizes = []
    model.model.vision_tower.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    with torch.no_grad():
        logits = model(**inputs, vision_batch_size=8).logits
        assert batch_sizes == [8]
        batch_sizes.clear()
        torch.testing.assert_close(model(**inputs, vision_batch_size=3).logits, logits, rtol=0, atol=0)
        assert batch_sizes == [3, 3, 2]
    batch_sizes.clear()
    progress = []
    settings = dict(max_new_tokens=3, do_sample=False)
    reference = model.generate(**inputs, **settings)
    batch_sizes.clear()
    output = model.generate(**inputs, **settings, vision_batch_size=2, progress_callback=lambda *p: progress.append(p))
    assert output.tolist() == reference.tolist()
    assert batch_sizes == [2, 2, 2, 2] and progress == [(2, 8), (4, 8), (6, 8), (8, 8)]
    with pytest.raises(ValueError, match="vision_batch_size"):
        model(**inputs, vision_batch_size=0)


def test_get_features_follow_transformers_output_conventions():
    model = tiny_model(vision_config={**tiny_config().vision_config.to_dict(), "num_hidden_layers": 3})
    model.set_attn_implementation("eager")
    inputs = video_inputs(model.config, [[3], [2]])
    pixels, counts = inputs["pixel_values_videos"], inputs["video_num_frames"]
    with torch.no_grad():
        for owner in (model, model.model):
            output = owner.get_video_features(
                pixels, counts, output_hidden_states=True, output_attentions=True, vision_batch_size=2
            )
            num_patches = (IMAGE_SIZE // 14) ** 2
            assert output.last_hidden_state.shape == (5, num_patches, 32)  # the feature layer of all 5 frames
            assert len(output.hidden_states) == 3 and len(output.attentions) == 2  # embeddings + the 2 built layers
            assert torch.equal(output.hidden_states[-1], output.last_hidden_state)
            assert output.attentions[0].shape == (5, 2, num_patches, num_patches)
            assert [video.shape[0] for video in output.pooler_output] == [video_tokens(model.config, n) for n in (3, 2)]
            as_tuple = owner.get_video_features(pixels, counts, return_dict=False)
            assert torch.equal(as_tuple[0], output.last_hidden_state)
            images = owner.get_image_features(pixels[:, :2], return_dict=True)
            assert images.last_hidden_state.shape[0] == 4 and len(images.pooler_output) == 4
            # without the vision features (what forward uses): the same tokens, the features are not returned
            lean = owner.get_video_features(pixels, counts, return_frame_features=False, vision_batch_size=2)
            assert lean.last_hidden_state is None
            assert all(torch.equal(*pair) for pair in zip(lean.pooler_output, output.pooler_output))
            assert owner.get_image_features(pixels[:, :2], return_frame_features=False).last_hidden_state is None


def test_forward_returns_the_vision_outputs_it_used():
    """`video_outputs` / `image_outputs` (transformers' multimodal output fields): what `get_video_features` gives for
    the same pixels (tokens, and the vision tower's per-layer states only when asked for), None without that input."""
    model = tiny_model(vision_config={**tiny_config().vision_config.to_dict(), "num_hidden_layers": 3})
    model.set_attn_implementation("eager")
    inputs = video_inputs(model.config, [[3], [2]])
    with torch.no_grad():
        reference = model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_num_frames"], output_hidden_states=True, output_attentions=True
        )
        plain = model(**inputs)
        asked = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert plain.image_outputs is None and asked.image_outputs is None
    for output in (plain, asked):
        videos = output.video_outputs
        assert videos.last_hidden_state is None  # the vision features of all frames are not kept
        assert all(torch.equal(*pair) for pair in zip(videos.pooler_output, reference.pooler_output, strict=True))
        assert torch.equal(output.video_hidden_states, torch.cat(videos.pooler_output))
    assert plain.video_outputs.hidden_states is None and plain.video_outputs.attentions is None
    for name in ("hidden_states", "attentions"):
        ours, expected = getattr(asked.video_outputs, name), getattr(reference, name)
        assert len(ours) == len(expected) > 0
        assert all(torch.equal(*pair) for pair in zip(ours, expected))
    images = torch.randn(2, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    input_ids = torch.tensor([[5] + [model.config.image_token_id] * video_tokens(model.config, 1) + [6]] * 2)
    with torch.no_grad():
        output = model(input_ids=input_ids, pixel_values=images)
        expected = model.get_image_features(images).pooler_output
    assert output.video_outputs is None and len(output.image_outputs.pooler_output) == 2
    assert all(torch.equal(*pair) for pair in zip(output.image_outputs.pooler_output, expected, strict=True))


@pytest.mark.parametrize("kind", ["video", "image"])
def test_placeholders_without_pixels_raise_at_prefill_only(kind):
    model = tiny_model()
    num_frames = 3 if kind == "video" else 1
    token_id = model.config.video_token_id if kind == "video" else model.config.image_token_id
    name = "pixel_values_videos" if kind == "video" else "pixel_values"
    input_ids = torch.tensor([[5, 6] + [token_id] * video_tokens(model.config, num_frames) + [7, 8]])
    pixels = torch.randn(1, num_frames, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match=f"{kind} placeholder tokens .* but no `{name}`"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match=f"no `{name}`"):
        model.generate(input_ids=input_ids, max_new_tokens=2)
    # a cached decode step receives only new tokens (and no pixels), even if one of them is a placeholder id
    with torch.no_grad():
        prefill = model(input_ids=input_ids, **{name: pixels}, use_cache=True)
        step = model(input_ids=torch.tensor([[token_id]]), past_key_values=prefill.past_key_values, use_cache=True)
    assert torch.isfinite(step.logits).all()


def test_sft_stage_with_activation_checkpointing_gives_every_trainable_parameter_a_gradient():
    from storm_hf.training import apply_training_stage

    model = tiny_model().train()
    apply_training_stage(model, "sft")
    model.activation_checkpointing_enable()
    inputs = _training_inputs(model)
    model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)).loss.backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any(name.startswith("model.vision_tower.") for name in trainable)
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_mamba_decay_parameters_are_marked_without_weight_decay_after_loading(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model = StormForConditionalGeneration.from_pretrained(tmp_path)
    marked = sorted(
        name.rsplit(".", 1)[-1] for name, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)
    )
    assert marked == sorted(["A_log", "D", "A_b_log", "D_b"] * 2)  # two bidirectional Mamba layers


def _padded_batch(lengths: list[int], hidden_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random sequences of `lengths`, right-padded with NaN (which must never reach a real token), and their lengths
    (None when all are equal: no padding)."""
    batch = torch.randn(len(lengths), max(lengths), hidden_size)
    for row, length in enumerate(lengths):
        batch[row, length:] = float("nan")
    return batch, (None if len(set(lengths)) == 1 else torch.tensor(lengths))


@pytest.mark.parametrize("lengths", [[200, 200, 200], [200, 131, 5]], ids=["unpadded", "right-padded"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_mixer_in_chunks_at_inference_equals_the_whole_sequence_scan(bidirectional, lengths):
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(64)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    hidden_states, padded_lengths = _padded_batch(lengths)
    calls = []

    def mixer_with(chunk_length):  # the same weights (a seeded tiny model) with another chunk length
        mixer = _initialised_mixer(bidirectional, chunk_length)
        mixer.in_proj.register_forward_hook(lambda *args: calls.append(args[1][0].shape[1]))
        return mixer

    with torch.no_grad():
        expected, expected_state = mixer_with(None)(hidden_states, padded_lengths, norm=norm)  # at once, as training
        assert calls == [200]
        for chunk_length in (1, 7, 8, 64, 200, 500):  # 7 and 64 do not divide 200; 500 is longer than the sequence
            calls.clear()
            output, state = mixer_with(chunk_length)(hidden_states, padded_lengths, norm=norm)
            if chunk_length >= 200:  # one chunk: the whole-sequence path, one `in_proj` for both directions
                assert calls == [200]
            else:
                assert len(calls) == math.ceil(200 / chunk_length) * (2 if bidirectional else 1)
                assert max(calls) == chunk_length
            for row, length in enumerate(lengths):
                torch.testing.assert_close(output[row, :length], expected[row, :length], rtol=1e-5, atol=1e-5)
            if bidirectional or padded_lengths is not None:
                assert state is None and expected_state is None
            else:
                torch.testing.assert_close(state.ssm_state, expected_state.ssm_state, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(state.conv_state, expected_state.conv_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_mixer_in_chunks_equals_the_flip_and_token_loop_reference_of_each_sequence(bidirectional):
    """Each sequence of a right-padded batch, scanned in chunks of 7 (the reversed scan reading the chunks last to
    first from each sequence's own end), against that sequence alone through the channel-major reference (conv1d,
    token-by-token scan, the backward direction as a flip of the whole sequence)."""
    torch.manual_seed(0)
    mixer = _initialised_mixer(bidirectional, inference_chunk_length=7)
    lengths = [40, 23, 9]
    hidden_states, padded_lengths = _padded_batch(lengths)
    with torch.no_grad():
        output, _ = mixer(hidden_states, padded_lengths)
        for row, length in enumerate(lengths):
            reference = _reference_mixer_output(mixer, hidden_states[row : row + 1, :length])
            torch.testing.assert_close(output[row : row + 1, :length], reference, rtol=1e-5, atol=1e-5)


def test_mixer_scans_at_once_at_inference_exactly_where_mamba_ssm_scan_applies(monkeypatch):
    """The mixer asks selective_scan's rule, with its streaming state: mamba-ssm's kernel (which starts from zeros)
    scans the whole sequence, a streaming call on the same machine scans in chunks."""
    from storm_hf.modeling import modeling_storm

    asked = []

    def on_cuda_with_mamba_ssm(u, initial_state=None, last_state_needs_grad=False):
        asked.append(initial_state)
        return initial_state is None and not last_state_needs_grad

    monkeypatch.setattr(modeling_storm, "mamba_ssm_scan_applies", on_cuda_with_mamba_ssm)
    mixer = _initialised_mixer(bidirectional=False, inference_chunk_length=4)
    calls = []
    mixer.in_proj.register_forward_hook(lambda *args: calls.append(args[1][0].shape[1]))
    x = torch.randn(2, 22, 64)
    with torch.no_grad():
        first, state = mixer(x[:, :12])
        assert calls == [12] and asked == [None]
        calls.clear()
        second, _ = mixer(x[:, 12:], state=state)
        assert calls == [4, 4, 2] and asked[1] is state.ssm_state
        torch.testing.assert_close(torch.cat([first, second], dim=1), mixer(x)[0], rtol=1e-5, atol=1e-5)


def test_projector_at_inference_equals_its_training_path():
    """Without a gradient the projector merges windows frame by frame and its mixers scan in chunks (of 5 positions
    here: 24 and 12 per video); with one, everything runs at once. Two videos of different lengths: a padded batch."""
    torch.manual_seed(0)
    projector = tiny_model(mamba_inference_chunk_length=5).model.temporal_projector
    vision = projector.linear.in_features // 4  # 2x2 windows
    features = torch.randn(9, IMAGE_SIZE // 14, IMAGE_SIZE // 14, vision)
    expected, _ = projector(features, [6, 3])
    with torch.no_grad():
        videos, _ = projector(features, [6, 3])
    assert [video.shape[0] for video in videos] == [6, 3]
    for video, reference in zip(videos, expected):
        torch.testing.assert_close(video, reference.detach(), rtol=1e-5, atol=1e-5)


def test_mamba_inference_chunk_length_is_a_validated_config_field_that_saving_keeps_and_the_mixers_apply(tmp_path):
    def chunk_lengths(model):
        return [layer.mixer.inference_chunk_length for layer in model.model.temporal_projector.layers]

    model = tiny_model(mamba_inference_chunk_length=6)
    assert chunk_lengths(model) == [6, 6]
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mamba_inference_chunk_length"] == 6
    assert chunk_lengths(StormForConditionalGeneration.from_pretrained(tmp_path)) == [6, 6]
    whole = StormForConditionalGeneration.from_pretrained(tmp_path, mamba_inference_chunk_length=None)
    assert chunk_lengths(whole) == [None, None]
    for value in (0, -4):
        message = f"`mamba_inference_chunk_length` must be a positive integer, got {value}"
        with pytest.raises(StrictDataclassClassValidationError, match=message):
            tiny_model(mamba_inference_chunk_length=value)


def test_mixer_names_the_weights_of_both_directions_and_loads_checkpoints_written_before(demo_checkpoint):
    causal, bidirectional = StormMambaMixer(64, bidirectional=False), StormMambaMixer(64)
    forward_keys = ["in_proj.weight", "out_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight"]
    forward_keys += ["dt_proj.weight", "dt_proj.bias", "A_log", "D"]
    reversed_keys = ["conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias"]
    reversed_keys += ["A_b_log", "D_b"]
    assert sorted(causal.state_dict()) == sorted(forward_keys)
    assert sorted(bidirectional.state_dict()) == sorted(forward_keys + reversed_keys)
    assert causal.reversed_scan_weights is None
    assert all(getattr(causal, key.split(".")[0]) is None for key in reversed_keys)
    assert bidirectional.reversed_scan_weights == (
        bidirectional.conv1d_b,
        bidirectional.x_proj_b,
        bidirectional.dt_proj_b,
        bidirectional.A_b_log,
        bidirectional.D_b,
    )

    # the bundled demo checkpoint (bidirectional) was written when these weights were registered through f-strings
    from safetensors.torch import load_file

    model, loading = StormForConditionalGeneration.from_pretrained(demo_checkpoint, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    assert not [key for key in loading["unexpected_keys"] if "temporal_projector" in key]
    saved = load_file(demo_checkpoint / "model.safetensors")
    for index, layer in enumerate(model.model.temporal_projector.layers):
        for key in forward_keys + reversed_keys:
            assert torch.equal(
                layer.mixer.get_parameter(key), saved[f"model.temporal_projector.layers.{index}.mixer.{key}"]
            )


def test_decode_steps_compile_with_fullgraph():
    """`_can_compile_fullgraph`: generate's compiled calls are the cached decode steps (text tokens, static cache)."""
    from transformers import StaticCache

    model = tiny_model()
    inputs = video_inputs(model.config, [[3]])
    length = inputs["input_ids"].shape[1]
    caches = [StaticCache(config=model.config, max_cache_len=length + 4) for _ in range(2)]
    compiled = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        for cache in caches:
            model(**inputs, past_key_values=cache, use_cache=True)
        step = {
            "input_ids": torch.tensor([[7]]),
            "attention_mask": torch.ones(1, length + 1, dtype=torch.long),
            "position_ids": torch.tensor([[length]]),
            "use_cache": True,
        }
        eager = model(**step, past_key_values=caches[0]).logits
        torch.testing.assert_close(compiled(**step, past_key_values=caches[1]).logits, eager)
