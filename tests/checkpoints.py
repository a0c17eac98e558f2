"""Tiny checkpoints written on the fly: source checkpoints in their own layouts (SigLIP, Qwen2 / Qwen2-VL, VILA), a
tiny STORM with its processor, and a Hugging Face cache seeded with a folder (no Hub)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from media import make_tokenizer
from modeling_utils import IMAGE_SIZE, PATCH_SIZE, tiny_config
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from storm_hf import StormForConditionalGeneration
from storm_hf.conversion.processor import build_processor
from storm_hf.modeling.modeling_storm import StormMambaLayer
from storm_hf.synthetic import byte_level_vocab


REPO_ID = "storm-org/storm-tiny"  # where the Hub tests push (to the `hub` fixture of conftest.py)
# The source checkpoints: SigLIP (4x4 patches -> 2x2 tokens per frame after the pixel-shuffle) and a Qwen2 language
# model whose vocabulary holds the 268 tokens of `make_tokenizer`.
VOCAB = 272
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
)
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def save_with_keys(model, folder: Path, rename=lambda key: key, pickle: bool = False) -> Path:
    """Save `model`'s config and its in-memory state dict under renamed keys (the layout a given version writes).

    Tied weights are stored once, under the first name, as transformers does."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state_dict, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state_dict[rename(key)] = tensor.contiguous()
    if pickle:
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        save_file(state_dict, folder / "model.safetensors")
    return folder


def tokenizer_without_vision_tokens() -> Qwen2Tokenizer:
    """A Qwen2 *text* tokenizer: ChatML tokens but none of Qwen2-VL's vision tokens."""
    return Qwen2Tokenizer(vocab=byte_level_vocab(), merges=[], extra_special_tokens=["<|im_start|>", "<|im_end|>"])


def siglip_source(layout: str, folder: Path):
    """A tiny SigLIP vision tower saved as `layout`; returns the in-memory vision module (the reference)."""
    torch.manual_seed(1)
    if layout == "siglip_vision_model":  # legacy `vision_model.` prefix, with the pooling head
        model = SiglipVisionModel(SiglipVisionConfig(**VISION, vision_use_head=True)).eval()
        save_with_keys(model, folder, lambda key: f"vision_model.{key}")
        return model
    if layout == "siglip":
        text = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=50,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        model = SiglipModel(SiglipConfig(vision_config=VISION, text_config=text)).eval()
        model.save_pretrained(folder)
        return model.vision_model
    if layout == "paligemma":  # the layout transformers >= 4.52 holds in memory: `model.vision_tower.*`
        gemma = GemmaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )
        config = PaliGemmaConfig(
            vision_config={**VISION, "model_type": "siglip_vision_model"},
            text_config=gemma,
            image_token_index=256,
            projection_dim=32,
        )
        model = PaliGemmaForConditionalGeneration(config).eval()
        save_with_keys(model, folder)
        return model.model.vision_tower
    raise ValueError(layout)


def qwen_source(layout: str, folder: Path):
    """A tiny Qwen2 / Qwen2-VL language model saved as `layout`, with a tokenizer.

    Returns (embedding module, function inputs_embeds -> logits): the reference language model.
    """
    torch.manual_seed(2)
    if layout == "qwen2-tied":  # like Qwen2-0.5B/1.5B: tied embeddings, no lm_head in the checkpoint
        model = Qwen2ForCausalLM(Qwen2Config(**TEXT, tie_word_embeddings=True)).eval()
        model.save_pretrained(folder)
        assert "lm_head.weight" not in load_file(folder / "model.safetensors")
        tokenizer_without_vision_tokens().save_pretrained(folder)
        return model.get_input_embeddings(), lambda embeds: model(inputs_embeds=embeds).logits
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    vision = dict(
        depth=1,
        embed_dim=32,
        hidden_size=64,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config={**TEXT, "rope_parameters": rope},
        vision_config=vision,
        image_token_id=266,
        video_token_id=267,
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    if layout == "qwen2_vl-legacy":  # `model.*` + `visual.*`: the published Qwen2-VL checkpoints (and 5.x saves)
        model.save_pretrained(folder)
        assert any(key.startswith("visual.") for key in load_file(folder / "model.safetensors"))
    else:  # `model.language_model.*` + `model.visual.*`
        save_with_keys(model, folder)
    make_tokenizer().save_pretrained(folder)
    return model.get_input_embeddings(), lambda embeds: model.lm_head(
        model.model.language_model(inputs_embeds=embeds).last_hidden_state
    )


def causal_lm_source(model_type: str, folder: Path, tie_word_embeddings: bool = False, spare_rows: int = 0):
    """A tiny decoder-only causal LM of `model_type` (llama, mistral, qwen3, ...) saved by transformers, with a text
    tokenizer without the vision tokens and `spare_rows` embedding rows beyond that tokenizer's tokens. Returns the
    model (the reference)."""
    tokenizer = tokenizer_without_vision_tokens()
    settings = {**TEXT, "vocab_size": len(tokenizer) + spare_rows, "head_dim": 16}
    config = AutoConfig.for_model(model_type, **settings, tie_word_embeddings=tie_word_embeddings)
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def projector_state_dict(config, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random (not init-valued) NVILA-style mm_projector weights: layers.1 Linear, layers.2+i Mamba layers."""
    torch.manual_seed(seed)
    linear = nn.Linear(4 * VISION["hidden_size"], TEXT["hidden_size"])
    state = {f"layers.1.{k}": v for k, v in linear.state_dict().items()}
    for index in range(config.mamba_num_layers):
        layer = StormMambaLayer(config)
        state.update({f"layers.{2 + index}.{k}": torch.randn_like(v) * 0.1 for k, v in layer.state_dict().items()})
    return state


def write_vila_checkpoint(root: Path, config, vision_pickle: bool = True, llm_type: str = "qwen2"):
    """llm/ (a `llm_type` causal LM: NVILA's Qwen2, VILA 1.5's Llama, + tokenizer), vision_tower/ (SiglipVisionModel,
    pickled), mm_projector/, config.json."""
    torch.manual_seed(4)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(llm_type, **TEXT, head_dim=16)).eval()
    llm.save_pretrained(root / "llm")
    make_tokenizer().save_pretrained(root / "llm")
    vision = SiglipVisionModel(SiglipVisionConfig(**VISION, vision_use_head=False)).eval()
    save_with_keys(vision, root / "vision_tower", lambda key: f"vision_model.{key}", pickle=vision_pickle)
    (root / "mm_projector").mkdir()
    projector = projector_state_dict(config)
    save_file(projector, root / "mm_projector" / "model.safetensors")
    settings = {
        "mm_projector_type": "storm_mamba",
        "temporal_pool_size": config.temporal_pool_size,
        "spatial_pool_size": 1,
    }
    (root / "mm_projector" / "config.json").write_text(json.dumps(settings))
    (root / "config.json").write_text(
        json.dumps({"model_type": "llava_llama", "mm_vision_select_layer": -1, "num_video_frames": 6})
    )
    return llm, vision, projector


def tiny_model_and_processor():
    """A random tiny STORM on the language model of `TEXT`, with its processor (the tokenizer of `make_tokenizer`)."""
    tokenizer = make_tokenizer()
    config = tiny_config(
        text_config={**TEXT, "model_type": "qwen2"},
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    torch.manual_seed(0)
    return StormForConditionalGeneration(config).eval(), build_processor(tokenizer, config, num_frames=4)


def seed_hub_cache(cache: Path, repo_id: str, files: Path, commit: str = "a" * 40) -> None:
    """Write `files` into an HF cache as huggingface_hub lays it out: blobs by hash, a snapshot of links, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = repo / "snapshots" / commit / path.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
