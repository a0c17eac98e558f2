"""TRL's `SFTTrainer` on STORM: with `StormDataCollator` (and LoRA), and with TRL's vision collator on stored frames."""

import numpy as np
import pytest
import torch

from storm_hf import StormForConditionalGeneration, StormProcessor
from storm_hf.synthetic import NUM_FRAMES, QUESTION_TYPES, make_messages, render_sample, temporal_task_config
from storm_hf.training import IGNORE_INDEX, StormDataCollator, clean_messages, storm_lora_config, storm_sft_config


trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

# Small, fast runs on CPU: fp32, no activation checkpointing (TRL turns both on by default), constant learning rate.
RUN_SETTINGS = {
    "per_device_train_batch_size": 4,
    "max_steps": 10,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "seed": 0,
    "dataloader_num_workers": 0,
}


def task_model(tokenizer):
    torch.manual_seed(0)
    return StormForConditionalGeneration(temporal_task_config(tokenizer))


def loss_of(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def train_and_check_the_loss_falls(trainer, batch) -> torch.Tensor:
    """Trains; checks that the loss on `batch` fell by over 1 nat; returns the trained model's logits on `batch`."""
    before = loss_of(trainer.model, batch)
    trainer.train()
    assert loss_of(trainer.model, batch) < before - 1.0
    with torch.no_grad():
        return trainer.model(**batch).logits


def test_storm_sft_config_sets_what_the_collator_needs(tmp_path):
    config = storm_sft_config(output_dir=str(tmp_path), learning_rate=1e-4, use_cpu=True, bf16=False)
    assert isinstance(config, trl.SFTConfig)
    assert config.remove_unused_columns is False
    assert config.dataset_kwargs == {"skip_prepare_dataset": True}
    assert config.max_length is None and config.learning_rate == 1e-4
    assert storm_sft_config(output_dir=str(tmp_path), max_length=4096, use_cpu=True).max_length == 4096


def test_sft_trainer_with_storm_collator_and_lora_trains_and_reloads_exactly(
    tmp_path, task_tokenizer, task_processor, temporal_task
):
    train = temporal_task["train"]
    batch = StormDataCollator(task_processor)([train[index] for index in range(4)])
    trainer = trl.SFTTrainer(
        model=task_model(task_tokenizer),
        args=storm_sft_config(output_dir=str(tmp_path / "out"), **RUN_SETTINGS),
        train_dataset=train,
        processing_class=task_processor,
        data_collator=StormDataCollator(task_processor),
        peft_config=storm_lora_config(r=8, lora_dropout=0.0),
    )
    assert isinstance(trainer.model, peft.PeftModel)
    trained_logits = train_and_check_the_loss_falls(trainer, batch)

    trainer.save_model(str(tmp_path / "adapter"))
    processor = StormProcessor.from_pretrained(tmp_path / "adapter")  # SFTTrainer saves the processing class
    reloaded_batch = StormDataCollator(processor)([train[index] for index in range(4)])
    reloaded = peft.PeftModel.from_pretrained(task_model(task_tokenizer), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**reloaded_batch).logits, trained_logits, rtol=0, atol=0)


def test_sft_trainer_defaults_with_storm_collator_fail_with_the_fix(
    tmp_path, task_tokenizer, task_processor, temporal_task
):
    # TRL's defaults tokenize the conversations as text and drop `messages`: the collator names the fix.
    settings = {**RUN_SETTINGS, "max_steps": 1}
    trainer = trl.SFTTrainer(
        model=task_model(task_tokenizer),
        args=trl.SFTConfig(output_dir=str(tmp_path / "out"), **settings),
        train_dataset=temporal_task["train"].select(range(4)),
        processing_class=task_processor,
        data_collator=StormDataCollator(task_processor),
    )
    with pytest.raises(KeyError, match="storm_sft_config"):
        trainer.train()


def stored_frames_dataset(num_samples: int, seed: int = 0):
    """Decoded frames stored in a `datasets` column, with the empty `images` column that makes TRL pick its vision
    collator. Rows are read back through `clean_messages` (frames come back as nested lists of ints, and every content
    entry carries the other entries' keys as `None`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_samples):
        frames, question, answer = render_sample(QUESTION_TYPES[index % len(QUESTION_TYPES)], rng)
        rows.append({"messages": make_messages(frames, question, answer), "images": []})
    stored = datasets.Dataset.from_list(rows)
    assert isinstance(stored[0]["messages"][0]["content"][0]["video"][0][0][0][0], int)
    return stored.with_transform(
        lambda rows: {"messages": [clean_messages(messages) for messages in rows["messages"]], "images": rows["images"]}
    )


def test_sft_trainer_with_trl_collator_on_stored_frames(tmp_path, task_tokenizer, task_processor):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    dataset = stored_frames_dataset(16)
    trainer = trl.SFTTrainer(
        model=task_model(task_tokenizer),
        args=trl.SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=True, max_length=None, **RUN_SETTINGS),
        train_dataset=dataset,
        processing_class=task_processor,
    )
    assert isinstance(trainer.data_collator, DataCollatorForVisionLanguageModeling)
    rows = [dataset[index] for index in range(4)]
    batch = trainer.data_collator([dict(row) for row in rows])
    reference = StormDataCollator(task_processor)(rows)  # pads on the left, TRL on the right
    torch.testing.assert_close(batch["pixel_values_videos"], reference["pixel_values_videos"], rtol=0, atol=0)
    assert batch["video_num_frames"].tolist() == reference["video_num_frames"].tolist() == [[NUM_FRAMES]] * 4
    for sample in range(4):
        labelled = batch["labels"][sample][batch["labels"][sample] != IGNORE_INDEX]
        expected = reference["labels"][sample][reference["labels"][sample] != IGNORE_INDEX]
        assert labelled.tolist() == expected.tolist()
        assert task_tokenizer.decode(labelled) == rows[sample]["messages"][1]["content"][0]["text"] + "<|im_end|>"

    trained_logits = train_and_check_the_loss_falls(trainer, reference)
    trainer.save_model(str(tmp_path / "checkpoint"))
    reloaded = StormForConditionalGeneration.from_pretrained(tmp_path / "checkpoint").eval()
    processor = StormProcessor.from_pretrained(tmp_path / "checkpoint")
    with torch.no_grad():
        logits = reloaded(**StormDataCollator(processor)(rows)).logits
    torch.testing.assert_close(logits, trained_logits, rtol=0, atol=0)
