"""Conversion: compose (SigLIP + a decoder-only LM or Qwen2-VL) and VILA/NVILA checkpoints -> STORM, checked against
hand-wired parts."""

import json
import os
from pathlib import Path

import pytest
import torch
from checkpoints import (
    TEXT,
    VISION,
    causal_lm_source,
    qwen_source,
    seed_hub_cache,
    siglip_source,
    write_vila_checkpoint,
)
from media import make_frames
from modeling_utils import IMAGE_SIZE, PATCH_SIZE, tiny_config
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoProcessor, TrainingArguments

import storm_hf
from storm_hf import StormForConditionalGeneration
from storm_hf.conversion import ConversionError, compose_storm, convert_vila_checkpoint
from storm_hf.modeling.modeling_storm import StormMambaLayer, StormPixelShuffle
from storm_hf.training import StormDataCollator, StormTrainer


def prompt_and_frames(video_token_id: int, num_video_tokens: int, num_frames: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(1, 250, (n,), generator=generator)  # noqa: E731
    input_ids = torch.cat([text(4), torch.full((num_video_tokens,), video_token_id), text(3)])[None]
    frames = torch.randn(num_frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return input_ids, frames


def hand_wired_logits(vision, feature_layer, project, embed, language_model, input_ids, frames, video_token_id):
    """The source parts wired by hand: vision tower -> projected, pooled tokens -> placeholders -> language model."""
    features = vision(frames, output_hidden_states=True).hidden_states[feature_layer]
    grid = features.unflatten(1, (IMAGE_SIZE // PATCH_SIZE, IMAGE_SIZE // PATCH_SIZE))
    tokens = project(grid)  # (num_tokens, hidden)
    embeds = embed(input_ids).clone()
    mask = input_ids[0] == video_token_id
    assert int(mask.sum()) == tokens.shape[0]
    embeds[0, mask] = tokens
    return language_model(embeds)


def composed_and_hand_wired_logits(model, vision, embed, language_model, num_frames: int = 4):
    """A composed `model`'s logits on a prompt with one video of `num_frames` frames, and the logits of the source
    parts wired by hand around the composed model's fresh projector (then temporal pooling of 2 by hand)."""
    video_token_id = model.config.video_token_id
    input_ids, frames = prompt_and_frames(
        video_token_id,
        storm_hf.num_visual_tokens(num_frames, IMAGE_SIZE, IMAGE_SIZE, patch_size=PATCH_SIZE, temporal_pool_size=2),
        num_frames,
    )

    def project(grid):
        videos, _ = model.model.temporal_projector(grid, [num_frames])
        pooled = videos[0].unflatten(0, (num_frames // 2, 2)).mean(1)
        return pooled.reshape(-1, pooled.shape[-1])

    with torch.no_grad():
        expected = hand_wired_logits(vision, -2, project, embed, language_model, input_ids, frames, video_token_id)
        logits = model(input_ids=input_ids, pixel_values_videos=frames[None]).logits
    return logits, expected


# ---------------------------------------------------------------- compose

# what the reports say about the vision parts STORM does not build (3 SigLIP layers, features of layer -2)
UNBUILT_LAYERS = "encoder.layers.2.layer_norm1.bias': vision encoder layers 2..2"
POST_LAYERNORM = "final LayerNorm"


@pytest.mark.parametrize(
    "vision_layout, language_layout, dropped",
    [
        ("siglip_vision_model", "qwen2-tied", ["attention-pooling head", UNBUILT_LAYERS, POST_LAYERNORM]),
        (
            "siglip",
            "qwen2_vl-legacy",
            ["text tower", "contrastive-loss", "attention-pooling head", "Qwen2-VL's own vision", UNBUILT_LAYERS],
        ),
        (
            "paligemma",
            "qwen2_vl",
            ["projector into Gemma", "Gemma language model", "Qwen2-VL's own vision", UNBUILT_LAYERS, POST_LAYERNORM],
        ),
    ],
)
def test_compose_gives_the_logits_of_the_hand_wired_parts(tmp_path, vision_layout, language_layout, dropped):
    vision = siglip_source(vision_layout, tmp_path / "vision")
    embed, language_model = qwen_source(language_layout, tmp_path / "language")
    output = tmp_path / "storm"
    _, _, report = compose_storm(
        tmp_path / "vision",
        tmp_path / "language",
        output,
        max_shard_size="100KB",
        mamba_state_size=4,
        temporal_pool_size=2,
    )
    for reason in dropped:
        assert reason in report, report
    if language_layout == "qwen2-tied":
        assert "added special tokens" in report

    # sharded safetensors, config with auto_map, processor with chat template, model card
    index = json.loads((output / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not any(key.startswith("model.vision_tower.head") for key in index["weight_map"])
    assert json.loads((output / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
    assert (output / "chat_template.jinja").is_file() and (output / "README.md").is_file()

    model = StormForConditionalGeneration.from_pretrained(output).eval()
    assert model.config.tie_word_embeddings == (language_layout == "qwen2-tied")
    mixer = model.model.temporal_projector.layers[0].mixer  # freshly initialised the Mamba way
    torch.testing.assert_close(mixer.A_log.exp(), torch.arange(1, 5.0).expand(mixer.intermediate_size, 4))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))

    video_token_id = model.config.video_token_id
    assert AutoProcessor.from_pretrained(output).tokenizer.convert_ids_to_tokens(video_token_id) == "<|video_pad|>"
    logits, expected = composed_and_hand_wired_logits(model, vision, embed, language_model)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_compose_fails_on_unknown_and_missing_keys(tmp_path):
    siglip_source("siglip_vision_model", tmp_path / "vision")
    qwen_source("qwen2-tied", tmp_path / "language")
    weights = tmp_path / "vision" / "model.safetensors"
    original = load_file(weights)
    save_file({**original, "vision_model.adapter.weight": torch.zeros(2)}, weights)
    with pytest.raises(ConversionError, match=r"vision_model\.adapter\.weight"):
        compose_storm(tmp_path / "vision", tmp_path / "language")
    save_file({k: v for k, v in original.items() if k != "vision_model.encoder.layers.1.mlp.fc2.bias"}, weights)
    with pytest.raises(
        ConversionError, match=r"no source: \['model\.vision_tower\.encoder\.layers\.1\.mlp\.fc2\.bias'\]"
    ):
        compose_storm(tmp_path / "vision", tmp_path / "language")


def test_compose_rejects_unsupported_architectures(tmp_path):
    siglip_source("siglip_vision_model", tmp_path / "vision")
    with pytest.raises(ConversionError, match="Qwen2"):
        compose_storm(tmp_path / "vision", tmp_path / "vision")
    with pytest.raises(ConversionError, match="does not exist"):
        compose_storm(tmp_path / "missing", tmp_path / "vision")


# ---------------------------------------------------------------- any decoder-only language model


def video_chat(frames, answer=None):
    chat = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What?"}]}]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


@pytest.mark.parametrize(
    "model_type, tied, spare_rows",
    [("llama", False, 0), ("qwen3", True, 8)],  # no row for the vision tokens: the embeddings grow; spare rows: as is
)
def test_compose_any_decoder_only_language_model(tmp_path, model_type, tied, spare_rows):
    """Compose over a tiny Llama / Qwen3: its own decoder class, its layers in `_no_split_modules`, the vision tokens
    given rows where the embeddings had none; the logits of the hand-wired parts, greedy `generate`, save/load and a
    Trainer step."""
    vision = siglip_source("siglip_vision_model", tmp_path / "vision")
    source = causal_lm_source(model_type, tmp_path / "language", tie_word_embeddings=tied, spare_rows=spare_rows)
    output = tmp_path / "storm"
    model, processor, report = compose_storm(
        tmp_path / "vision", tmp_path / "language", output, mamba_state_size=4, temporal_pool_size=2
    )
    assert type(model.model.language_model) is type(source.model)
    decoder_layer = type(source.model.layers[0]).__name__  # LlamaDecoderLayer, Qwen3DecoderLayer
    assert decoder_layer in model._no_split_modules and "Qwen2DecoderLayer" not in model._no_split_modules
    assert {"SiglipEncoderLayer", "StormMambaLayer"} <= set(model._no_split_modules)

    old_rows, rows = source.config.vocab_size, len(processor.tokenizer)
    embeddings = model.get_input_embeddings().weight
    assert (model.lm_head.weight.data_ptr() == embeddings.data_ptr()) == tied
    if spare_rows:
        assert embeddings.shape[0] == old_rows >= rows and "grew" not in report
    else:
        assert f"grew the language model's embeddings from {old_rows} to {rows} rows" in report
        assert embeddings.shape[0] == model.config.text_config.vocab_size == rows == old_rows + 4
        for grown, original in (
            (embeddings, source.model.embed_tokens.weight),
            (model.lm_head.weight, source.lm_head.weight),
        ):
            torch.testing.assert_close(grown[:old_rows], original)
            mean = original.mean(0).expand(rows - old_rows, -1)
            torch.testing.assert_close(grown[old_rows:], mean, rtol=0, atol=1e-4)

    # Forward with a video: the hand-wired source parts (the LM's rows; a grown embedding adds logits columns).
    video_token_id = model.config.video_token_id
    assert processor.tokenizer.convert_ids_to_tokens(video_token_id) == "<|video_pad|>"

    def embed(ids):  # the placeholders' rows are overwritten by the video tokens
        return source.get_input_embeddings()(torch.where(ids == video_token_id, 0, ids))

    logits, expected = composed_and_hand_wired_logits(model, vision, embed, lambda e: source(inputs_embeds=e).logits)
    torch.testing.assert_close(logits[..., :old_rows], expected, rtol=1e-4, atol=1e-4)

    # Greedy generation: each new token is the argmax of a cache-free forward over the sequence before it.
    inputs = processor.apply_chat_template(
        video_chat(make_frames(6)), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt_length = inputs["input_ids"].shape[1]
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    visual = {k: inputs[k] for k in ("pixel_values_videos", "video_num_frames", "temporal_sampling_stride")}
    with torch.no_grad():
        for position in range(prompt_length, generated.shape[1]):
            step_logits = model(input_ids=generated[:, :position], use_cache=False, **visual).logits[0, -1]
            assert step_logits[generated[0, position]] >= step_logits.max() - 1e-4

    # Save/load: the saved checkpoint is the same model.
    reloaded = StormForConditionalGeneration.from_pretrained(output).eval()
    assert reloaded.config.text_config.model_type == model_type
    assert reloaded.config.text_config.vocab_size == embeddings.shape[0]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)

    # One Trainer step changes the language model and the projector.
    samples = [{"messages": video_chat(make_frames(6, seed=seed), answer="the")} for seed in range(2)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "train"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = StormTrainer(
        model=reloaded.train(), args=args, train_dataset=samples, data_collator=StormDataCollator(processor)
    )
    before = {name: parameter.detach().clone() for name, parameter in reloaded.named_parameters()}
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
    changed = {name for name, parameter in reloaded.named_parameters() if not torch.equal(parameter, before[name])}
    assert any(".language_model.layers." in name for name in changed)
    assert any(".temporal_projector." in name for name in changed)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_device_map_keeps_every_layer_of_any_language_model_whole(model_type):
    """`from_pretrained(device_map=...)` passes `_no_split_modules` to accelerate's `infer_auto_device_map`: over a
    Llama or Qwen3 language model it lists that model's decoder layer, so a map over two devices that cuts the LLM
    keeps each decoder layer (and each vision and Mamba layer) on one device."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    text = {**TEXT, "model_type": model_type, "num_hidden_layers": 4, "head_dim": 16}
    model = StormForConditionalGeneration(tiny_config(text_config=text))
    sizes = compute_module_sizes(model)
    half_a_layer_past_half = sizes[""] // 2 + sizes["model.language_model.layers.0"] // 2
    device_map = infer_auto_device_map(
        model,
        max_memory={"cpu": half_a_layer_past_half, "disk": 10 * sizes[""]},
        no_split_module_classes=list(model._no_split_modules),
    )
    assert {"cpu", "disk"} <= set(device_map.values())
    layers = {name for name, module in model.named_modules() if type(module).__name__ in model._no_split_modules}
    assert any(name.startswith("model.language_model.layers.") for name in layers)
    cut = [key for key in device_map if any(key.startswith(f"{layer}.") for layer in layers)]
    assert not cut, cut


# ---------------------------------------------------------------- VILA / NVILA checkpoints


def nvila_flat_square(x: torch.Tensor) -> torch.Tensor:
    """NVILA's `DownSampleBlock.flat_square` (llava/model/multimodal_projector/base_projector.py), verbatim logic."""
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.contiguous()
    x = x.view(n, w, int(h / 2), int(c * 2))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x


@pytest.mark.parametrize("side", [4, 5])
def test_nvila_downsample_and_storm_pixel_shuffle_agree(side):
    features = torch.randn(3, side, side, 8)
    assert torch.equal(StormPixelShuffle(2)(features), nvila_flat_square(features))


@pytest.mark.parametrize("llm_type", ["qwen2", "llama"])  # NVILA's LLM, VILA 1.5's
def test_vila_conversion_gives_the_logits_of_the_hand_wired_parts(tmp_path, llm_type):
    config = tiny_config(
        vision_config={**VISION, "model_type": "siglip_vision_model", "vision_use_head": False},
        text_config={**TEXT, "model_type": llm_type, "head_dim": 16},
        mamba_state_size=4,
        temporal_pool_size=2,
    )
    llm, vision, projector = write_vila_checkpoint(tmp_path / "vila", config, llm_type=llm_type)
    _, _, report = convert_vila_checkpoint(tmp_path / "vila", tmp_path / "storm", max_shard_size="100KB")
    assert "vision_tower/: dropped 2 tensor(s) such as 'vision_model.post_layernorm.bias'" in report, report
    model = StormForConditionalGeneration.from_pretrained(tmp_path / "storm").eval()
    assert model.config.vision_feature_layer == -1 and model.config.mamba_num_layers == 2
    assert type(model.model.language_model) is type(llm.model)
    assert AutoProcessor.from_pretrained(tmp_path / "storm").video_processor.num_frames == 6

    linear = nn.Linear(4 * VISION["hidden_size"], TEXT["hidden_size"])
    linear.load_state_dict({k: projector[f"layers.1.{k}"] for k in ("weight", "bias")})
    layers = [StormMambaLayer(config) for _ in range(2)]
    for index, layer in enumerate(layers):
        prefix = f"layers.{2 + index}."
        layer.load_state_dict({k[len(prefix) :]: v for k, v in projector.items() if k.startswith(prefix)})

    num_frames = 5  # the last temporal pool group has 1 frame

    def project(grid):  # NVILA's downsample -> Linear -> Mamba stack -> temporal pooling by hand
        tokens = linear(nvila_flat_square(grid))
        hidden = tokens.reshape(1, -1, tokens.shape[-1])
        for layer in layers:
            hidden, _ = layer(hidden)
        frames = hidden.reshape(num_frames, -1, hidden.shape[-1])
        pooled = torch.stack([frames[0:2].mean(0), frames[2:4].mean(0), frames[4:5].mean(0)])
        return pooled.reshape(-1, pooled.shape[-1])

    video_token_id = model.config.video_token_id
    num_tokens = storm_hf.num_visual_tokens(
        num_frames, IMAGE_SIZE, IMAGE_SIZE, patch_size=PATCH_SIZE, temporal_pool_size=2
    )
    input_ids, frames = prompt_and_frames(video_token_id, num_tokens, num_frames)
    with torch.no_grad():
        expected = hand_wired_logits(
            vision,
            -1,
            project,
            llm.get_input_embeddings(),
            lambda e: llm(inputs_embeds=e).logits,
            input_ids,
            frames,
            video_token_id,
        )
        logits = model(input_ids=input_ids, pixel_values_videos=frames[None]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture
def vila_checkpoint(tmp_path):
    config = tiny_config(
        vision_config={**VISION, "model_type": "siglip_vision_model"},
        text_config={**TEXT, "model_type": "qwen2"},
        mamba_state_size=4,
    )
    write_vila_checkpoint(tmp_path / "vila", config, vision_pickle=False)
    return tmp_path / "vila"


def _edit_projector(root: Path, edit):
    path = root / "mm_projector" / "model.safetensors"
    weights = load_file(path)
    edit(weights)
    save_file(weights, path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda w: w.update({"layers.2.mixer.extra_scale": torch.ones(1)}), r"layers\.2\.mixer\.extra_scale"),
        (lambda w: w.update({"layers.5.norm.weight": torch.ones(64)}), r"numbered"),
        (lambda w: w.pop("layers.1.bias"), r"model\.temporal_projector\.linear\.bias"),
        (lambda w: w.pop("layers.3.mixer.D_b"), r"model\.temporal_projector\.layers\.1\.mixer\.D_b"),
        (lambda w: w.update({"layers.1.weight": torch.zeros(64, 100)}), r"shape mismatch.*linear\.weight"),
    ],
)
def test_vila_mapping_is_strict(vila_checkpoint, edit, message):
    _edit_projector(vila_checkpoint, edit)
    with pytest.raises(ConversionError, match=message):
        convert_vila_checkpoint(vila_checkpoint)


def test_vila_rejects_other_layouts(vila_checkpoint):
    config_path = vila_checkpoint / "mm_projector" / "config.json"
    config_path.write_text(json.dumps({"mm_projector_type": "mlp_downsample"}))
    with pytest.raises(ConversionError, match="storm_mamba"):
        convert_vila_checkpoint(vila_checkpoint)
    config_path.write_text(json.dumps({"mm_projector_type": "storm_mamba", "mamba_state_size": 8}))
    with pytest.raises(ConversionError, match="mamba_state_size"):
        convert_vila_checkpoint(vila_checkpoint)
    os.rename(vila_checkpoint / "mm_projector", vila_checkpoint / "projector")
    with pytest.raises(ConversionError, match="mm_projector"):
        convert_vila_checkpoint(vila_checkpoint)


class _Payload:
    """Unpickling this runs code (touches a file): what `weights_only=True` must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_loaded_with_weights_only(vila_checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    vision = vila_checkpoint / "vision_tower"
    weights = load_file(vision / "model.safetensors")
    (vision / "model.safetensors").unlink()
    torch.save({**weights, "payload": _Payload(marker)}, vision / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        convert_vila_checkpoint(vila_checkpoint)
    assert not marker.exists()


def test_compose_from_hub_ids_through_an_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    siglip_source("siglip", tmp_path / "vision")
    qwen_source("qwen2_vl-legacy", tmp_path / "language")
    seed_hub_cache(tmp_path / "cache", "google/siglip-tiny", tmp_path / "vision")
    seed_hub_cache(tmp_path / "cache", "Qwen/Qwen2-VL-tiny", tmp_path / "language")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    compose_storm("google/siglip-tiny", "Qwen/Qwen2-VL-tiny", tmp_path / "storm", mamba_state_size=4)
    card = (tmp_path / "storm" / "README.md").read_text()
    assert "base_model:\n- google/siglip-tiny\n- Qwen/Qwen2-VL-tiny" in card
    with pytest.raises(ConversionError, match="neither a local folder nor in the Hugging Face cache"):
        compose_storm("google/not-cached", "Qwen/Qwen2-VL-tiny")
