"""The multi-GPU accelerate configs and the training script in examples/."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import torch
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from modeling_utils import tiny_model

from storm_hf import StormForConditionalGeneration, StormProcessor


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = EXAMPLES / "accelerate"


def read_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_fsdp2_config_shards_every_layer_the_model_keeps_whole():
    config = read_config("fsdp2.yaml")
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    fsdp = config["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        transformer_cls_names_to_wrap=fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","),
    )
    model = tiny_model()
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)  # accelerate's own resolution of the class names
    wrapped = Counter(type(module).__name__ for module in model.modules() if policy(module))
    # The repeated layers (items of a ModuleList) among the modules the model keeps whole; embeddings stay in the root.
    layers = Counter(
        type(layer).__name__
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList)
        for layer in module
        if type(layer).__name__ in model._no_split_modules
    )
    assert set(layers) == {"SiglipEncoderLayer", "StormMambaLayer", "Qwen2DecoderLayer"}
    assert wrapped == layers  # every layer is its own shard unit, e.g. both Mamba layers


def test_ddp_and_zero3_configs():
    assert read_config("ddp.yaml")["distributed_type"] == "MULTI_GPU"
    config = read_config("zero3.yaml")
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero3_init_flag"]
    deepspeed_file = Path(config["deepspeed_config"]["deepspeed_config_file"])
    assert deepspeed_file.parts[:2] == ("examples", "accelerate")  # relative to the repository root, like the launch
    deepspeed = json.loads((CONFIGS / deepspeed_file.name).read_text())
    assert deepspeed["zero_optimization"]["stage"] == 3
    assert deepspeed["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # save_model writes full weights


def test_train_storm_script_trains_and_saves_model_and_processor(tmp_path, demo_checkpoint):
    spec = importlib.util.spec_from_file_location("train_storm", EXAMPLES / "train_storm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    arguments = ["--model", str(demo_checkpoint), "--stage", "alignment", "--output-dir", str(out), "--max-steps", "2"]
    script.main([*arguments, "--num-synthetic", "8", "--batch-size", "4", "--learning-rate", "1e-3", "--cpu"])
    trained = StormForConditionalGeneration.from_pretrained(out)
    original = StormForConditionalGeneration.from_pretrained(demo_checkpoint)
    StormProcessor.from_pretrained(out)
    changed = {
        name
        for (name, parameter), reference in zip(trained.named_parameters(), original.parameters())
        if not (parameter == reference).all()
    }
    assert changed and all(name.startswith("model.temporal_projector.") for name in changed)  # the alignment stage
