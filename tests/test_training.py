"""Training support: collator labels and batching, stage presets, LoRA preset, Trainer with and without PEFT."""

import re

import datasets
import numpy as np
import peft
import pytest
import torch
from transformers import TrainingArguments

from storm_hf import StormForConditionalGeneration
from storm_hf.synthetic import (
    IMAGE_SIZE,
    NUM_FRAMES,
    make_messages,
    render_sample,
    temporal_task_config,
)
from storm_hf.training import (
    IGNORE_INDEX,
    StormDataCollator,
    StormTrainer,
    apply_training_stage,
    storm_lora_config,
)


# Short names for the task fixtures of conftest.py.
@pytest.fixture
def tokenizer(task_tokenizer):
    return task_tokenizer


@pytest.fixture
def processor(task_processor):
    return task_processor


@pytest.fixture
def task(temporal_task):
    return temporal_task


def tiny_task_model(tokenizer, seed=0, **overrides):
    torch.manual_seed(seed)
    return StormForConditionalGeneration(temporal_task_config(tokenizer, **overrides))


def training_arguments(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        max_steps=10,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def fixed_batch(processor, task, size=4):
    return StormDataCollator(processor)([task["train"][index] for index in range(size)])


# ---------------------------------------------------------------- collator


def test_collator_labels_only_the_assistant_answer(processor, task):
    batch = StormDataCollator(processor)([task["train"][index] for index in range(4)])
    tokenizer = processor.tokenizer
    assert batch["pixel_values_videos"].shape == (4, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["video_num_frames"].tolist() == [[NUM_FRAMES]] * 4
    assert "video_metadata" not in batch and "assistant_masks" not in batch
    for sample in range(4):
        labelled = batch["labels"][sample][batch["labels"][sample] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == task["train"][sample]["answer"] + "<|im_end|>"
    # padding and the prompt (placeholders included) are never labelled
    assert bool((batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all())
    video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert bool((batch["labels"][batch["input_ids"] == video_token_id] == IGNORE_INDEX).all())


def test_collator_batches_ragged_videos_and_decoded_frames_from_datasets(processor):
    rng = np.random.default_rng(0)
    clip = lambda frames: render_sample("direction", rng, num_frames=frames)[0]  # noqa: E731
    conversation_a = make_messages(clip(4), "Which way does the shape move, left or right?", "left")
    conversation_b = make_messages(clip(8), "Which way does the shape move, left or right?", "right")
    conversation_b[0]["content"].insert(1, {"type": "video", "video": clip(6)})  # two videos in one sample
    conversation_b.append({"role": "user", "content": [{"type": "text", "text": "Does the shape turn back?"}]})
    conversation_b.append({"role": "assistant", "content": [{"type": "text", "text": "no"}]})
    # a `datasets` round trip: nested lists for the frames, None for absent keys
    stored = datasets.Dataset.from_list([{"messages": conversation_a}, {"messages": conversation_b}])
    collator = StormDataCollator(processor, processor_kwargs={"do_sample_frames": False})
    batch = collator([stored[0], stored[1]])
    assert batch["video_num_frames"].tolist() == [[4, 0], [8, 6]]
    assert batch["pixel_values_videos"].shape == (2, 14, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert bool((batch["pixel_values_videos"][0, 4:] == 0).all())  # zero padding after the 4 frames of sample 0
    answers = processor.tokenizer.decode(batch["labels"][1][batch["labels"][1] != IGNORE_INDEX])
    assert answers == "right<|im_end|>no<|im_end|>"  # every assistant turn, nothing else
    model = tiny_task_model(processor.tokenizer)
    assert torch.isfinite(model(**batch).loss)


def test_collator_explains_removed_columns(processor):
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        StormDataCollator(processor)([{"input_ids": [1, 2]}])


# ---------------------------------------------------------------- stages and LoRA


def test_stage_presets(tokenizer):
    model = tiny_task_model(tokenizer)
    counts = apply_training_stage(model, "alignment")
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(name.startswith("model.temporal_projector.") for name in trainable)
    assert "model.temporal_projector.linear.weight" in trainable
    assert any(".layers.0.mixer.A_log" in name for name in trainable)
    assert counts["trainable"] == sum(p.numel() for p in model.model.temporal_projector.parameters())

    counts = apply_training_stage(model, "sft")
    assert all(parameter.requires_grad for parameter in model.parameters()) and counts["frozen"] == 0
    with pytest.raises(ValueError, match="alignment"):
        apply_training_stage(model, "pretraining")


@pytest.mark.parametrize("include_mamba", [False, True])
def test_lora_preset_targets_the_llm_and_optionally_the_mamba_projections(tokenizer, include_mamba):
    model = peft.get_peft_model(tiny_task_model(tokenizer), storm_lora_config(r=4, include_mamba=include_mamba))
    lora_modules = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert lora_modules and not any("vision_tower" in name for name in lora_modules)
    assert any(re.search(r"language_model\.layers\.\d+\.self_attn\.q_proj", name) for name in lora_modules)
    assert any(re.search(r"language_model\.layers\.\d+\.mlp\.down_proj", name) for name in lora_modules)
    mamba = {name for name in lora_modules if "temporal_projector" in name}
    assert bool(mamba) is include_mamba
    assert all(name.endswith(("in_proj", "out_proj")) for name in mamba)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    saved = {name for name in trainable if "temporal_projector" in name and "modules_to_save" in name}
    assert any("linear" in name for name in saved)  # the projector's Linear always trains fully
    assert any("mixer.A_log" in name for name in saved) is not include_mamba  # ... and the Mamba unless it has LoRA
    assert not any("vision_tower" in name for name in trainable)


# ---------------------------------------------------------------- Trainer


def _loss(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_trainer_lowers_the_loss_and_keeps_the_chat_columns(tmp_path, tokenizer, processor, task):
    model = tiny_task_model(tokenizer)
    batch = fixed_batch(processor, task)
    before = _loss(model, batch)
    args = training_arguments(tmp_path)
    assert args.remove_unused_columns  # the Trainer default, which would drop `messages`
    given = args.to_dict()
    trainer = StormTrainer(
        model=model, args=args, train_dataset=task["train"], data_collator=StormDataCollator(processor)
    )
    assert not trainer.args.remove_unused_columns and trainer.args.label_names == ["labels"]
    assert args.to_dict() == given  # the caller's arguments are left as they were
    assert trainer.args.to_dict() == {**given, "remove_unused_columns": False, "label_names": ["labels"]}
    trainer.train()
    assert _loss(model, batch) < before - 1.0


def test_trainer_keeps_label_names_the_caller_set(tmp_path, tokenizer, processor):
    args = training_arguments(tmp_path, label_names=[])  # no label columns: evaluation computes no loss
    trainer = StormTrainer(model=tiny_task_model(tokenizer), args=args, data_collator=StormDataCollator(processor))
    assert trainer.args.label_names == [] and not trainer.args.remove_unused_columns


def test_alignment_stage_trains_only_the_projector(tmp_path, tokenizer, processor, task):
    model = tiny_task_model(tokenizer)
    apply_training_stage(model, "alignment")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    args = training_arguments(tmp_path, max_steps=3)
    trainer = StormTrainer(
        model=model, args=args, train_dataset=task["train"], data_collator=StormDataCollator(processor)
    )
    trainer.train()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        if name.startswith("model.temporal_projector."):
            continue  # trained (A_log/D of an unused direction may move little, but the stage allows it)
        assert not changed, f"{name} changed in the alignment stage"
    assert not torch.equal(
        model.model.temporal_projector.linear.weight, before["model.temporal_projector.linear.weight"]
    )


def test_lora_trainer_adapters_save_reload_and_merge(tmp_path, tokenizer, processor, task):
    model = peft.get_peft_model(tiny_task_model(tokenizer), storm_lora_config(r=8, lora_dropout=0.0))
    batch = fixed_batch(processor, task)
    before = _loss(model, batch)
    args = training_arguments(tmp_path, learning_rate=1e-2)
    trainer = StormTrainer(
        model=model, args=args, train_dataset=task["train"], data_collator=StormDataCollator(processor)
    )
    trainer.train()
    model.eval()
    with torch.no_grad():
        trained_logits = model(**batch).logits
    assert _loss(model, batch) < before - 1.0

    model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(tiny_task_model(tokenizer), tmp_path / "adapter").eval()
    merged = reloaded.merge_and_unload().eval()
    assert type(merged) is StormForConditionalGeneration
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, trained_logits, atol=1e-4, rtol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients_and_trains(tmp_path, tokenizer, processor, task):
    batch = fixed_batch(processor, task)
    gradients = []
    for checkpointing in (False, True):
        model = tiny_task_model(tokenizer).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.temporal_projector.layers[0].gradient_checkpointing
        model(**batch).loss.backward()
        gradients.append({name: parameter.grad for name, parameter in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4, msg=name)

    model = tiny_task_model(tokenizer)
    before = _loss(model, batch)
    args = training_arguments(tmp_path, activation_checkpointing=True)
    StormTrainer(
        model=model, args=args, train_dataset=task["train"], data_collator=StormDataCollator(processor)
    ).train()
    assert _loss(model, batch) < before - 1.0


def test_trainer_saves_the_processor_with_the_model(tmp_path, tokenizer, processor, task):
    from storm_hf import StormProcessor

    model = tiny_task_model(tokenizer)
    args = training_arguments(tmp_path, max_steps=1)
    trainer = StormTrainer(
        model=model, args=args, train_dataset=task["train"], data_collator=StormDataCollator(processor)
    )
    assert trainer.processing_class is processor  # taken from the collator
    trainer.train()
    trainer.save_model(str(tmp_path / "checkpoint"))
    reloaded_processor = StormProcessor.from_pretrained(tmp_path / "checkpoint")
    reloaded = StormForConditionalGeneration.from_pretrained(tmp_path / "checkpoint").eval()
    batch = fixed_batch(processor, task)
    reloaded_batch = fixed_batch(reloaded_processor, task)
    for key, value in batch.items():
        torch.testing.assert_close(reloaded_batch[key], value, rtol=0, atol=0, msg=key)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**reloaded_batch).logits, model(**batch).logits, rtol=0, atol=0)

    with pytest.raises(ValueError, match="processing_class=processor"):
        StormTrainer(model=model, args=args, train_dataset=task["train"], data_collator=lambda features: features)


@pytest.mark.parametrize("module_learning_rates", [None, {"language_model": 1e-4}])
def test_optimizer_decays_neither_norms_biases_nor_the_mamba_state_parameters(
    tmp_path, tokenizer, processor, task, module_learning_rates
):
    model = tiny_task_model(tokenizer)
    state_parameters = {"A_log", "D", "A_b_log", "D_b"}
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] in state_parameters:
            parameter._no_weight_decay = True  # as mamba-ssm marks them (and StormMambaMixer does)
    args = training_arguments(tmp_path, weight_decay=0.1)
    trainer = StormTrainer(
        model=model,
        args=args,
        train_dataset=task["train"],
        data_collator=StormDataCollator(processor),
        module_learning_rates=module_learning_rates,
    )
    optimizer = trainer.create_optimizer()
    decay_of = {
        id(parameter): group["weight_decay"] for group in optimizer.param_groups for parameter in group["params"]
    }
    names = dict(model.named_parameters())
    assert len(decay_of) == len(names)  # every parameter is in exactly one group
    for name, parameter in names.items():
        last = name.split(".")
        undecayed = last[-1] in state_parameters or last[-1] == "bias" or any("norm" in part for part in last)
        assert decay_of[id(parameter)] == (0.0 if undecayed else 0.1), name
    assert decay_of[id(model.model.temporal_projector.layers[0].mixer.A_log)] == 0.0
    assert decay_of[id(model.model.temporal_projector.layers[0].mixer.in_proj.weight)] == 0.1
