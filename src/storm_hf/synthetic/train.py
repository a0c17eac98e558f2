"""Training a model on the synthetic temporal task with `StormTrainer`."""

import os


FIRST_STAGE_QUESTION_TYPES = ("direction",)


def train_temporal_task_model(
    model,
    processor,
    train_dataset,
    output_dir: str | os.PathLike,
    max_steps: int = 1500,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    language_model_learning_rate: float | None = None,
    warmup_steps: int = 30,
    seed: int = 0,
    logging_steps: int = 100,
    first_stage_steps: int = 0,
    first_stage_question_types: tuple[str, ...] = FIRST_STAGE_QUESTION_TYPES,
    **training_arguments,
):
    """Trains `model` on the task with `StormTrainer` (all parameters, the paper's `sft` stage) and returns the
    `TrainOutput`.

    AdamW without weight decay, cosine schedule after `warmup_steps`, gradients clipped to norm 1. The vision tower and
    the projector train at `learning_rate`, the LLM (and LM head) at `language_model_learning_rate` (None: the same).
    A slower LLM (NVILA trains its projector much faster than its LLM) kept long runs on the earlier 4-frame task from
    settling on the answer priors before the visual features carried the answer; short runs need the LLM to learn the
    answer format fast.
    Two stages when `first_stage_steps` > 0: first `first_stage_steps` steps on the rows of
    `first_stage_question_types` only (default `direction`, the order question a short run learns first: the LLM
    learns to read the visual tokens by position on it), then `max_steps` steps on every row, each stage with its own
    warm-up and cosine schedule; the `TrainOutput` is the second stage's. Trained on all types from the start, the
    reduced benchmark's STORM + T.Pool stayed at the answer priors after 400 steps. The first stage leaves its loss
    plateau after 100-300 steps, or not before the cosine schedule has decayed: in the one run seen stuck at the end
    of a 300-step first stage, 2700 all-type steps left `direction` at 45.5% (the benchmark's full size uses 600).
    Nothing is saved to `output_dir` except the Trainer's logs; extra keyword arguments go to `TrainingArguments`."""
    from transformers import TrainingArguments

    from ..training import StormDataCollator, StormTrainer, apply_training_stage

    apply_training_stage(model, "sft")
    settings = dict(
        output_dir=os.fspath(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    settings.update(training_arguments)
    module_learning_rates = (
        None
        if language_model_learning_rate is None
        else {"language_model": language_model_learning_rate, "lm_head": language_model_learning_rate}
    )
    stages = [(train_dataset, max_steps)]
    if first_stage_steps:
        stages.insert(0, (_rows_of_types(train_dataset, first_stage_question_types), first_stage_steps))
    for dataset, steps in stages:
        trainer = StormTrainer(
            model=model,
            args=TrainingArguments(**dict(settings, max_steps=steps)),
            train_dataset=dataset,
            data_collator=StormDataCollator(processor),
            module_learning_rates=module_learning_rates,
        )
        output = trainer.train()
    return output


def _rows_of_types(dataset, question_types):
    """The rows of `dataset` (a `datasets.Dataset` or an indexable of rows) whose `question_type` is one of
    `question_types`."""
    from torch.utils.data import Subset

    types = dataset["question_type"] if hasattr(dataset, "column_names") else [row["question_type"] for row in dataset]
    indices = [index for index, question_type in enumerate(types) if question_type in question_types]
    if not indices:
        raise ValueError(f"No training rows of the first-stage question types {question_types}.")
    return dataset.select(indices) if hasattr(dataset, "select") else Subset(dataset, indices)
