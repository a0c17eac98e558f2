"""Training STORM with `transformers.Trainer` or TRL's `SFTTrainer` (with or without PEFT): data collator, the paper's
stages, a LoRA preset, the `SFTConfig` fields STORM needs.

```python
from storm_hf.training import StormDataCollator, StormTrainer, apply_training_stage, storm_lora_config

apply_training_stage(model, "alignment")            # stage 1: only the temporal projector trains
trainer = StormTrainer(model=model, args=args, train_dataset=dataset, data_collator=StormDataCollator(processor))
trainer.train()                                     # checkpoints hold the processor too
apply_training_stage(model, "sft")                  # stage 2: everything trains
model = peft.get_peft_model(model, storm_lora_config())  # or: LoRA on the LLM, projector fully trained

# TRL
trainer = trl.SFTTrainer(model=model, args=storm_sft_config(output_dir="out"), train_dataset=dataset,
                         processing_class=processor, data_collator=StormDataCollator(processor),
                         peft_config=storm_lora_config())
```
"""

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from transformers import Trainer


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Modules of `StormModel` by role. The token compressor has no parameters.
VISION_MODULES = ("vision_tower",)
PROJECTOR_MODULES = ("temporal_projector",)
LANGUAGE_MODULES = ("language_model", "lm_head")
STAGES = {
    # Paper, stage 1: image encoder and LLM frozen; the Linear + Mamba projector (randomly initialised) trains.
    "alignment": PROJECTOR_MODULES,
    # Paper, stages 2 and 3 (SFT, long-video fine-tuning): everything trains.
    "sft": VISION_MODULES + PROJECTOR_MODULES + LANGUAGE_MODULES,
}

# LoRA targets: attention and MLP projections of the LLM only. A bare `q_proj` would also hit SigLIP's attention.
LLM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MAMBA_LORA_TARGETS = r".*temporal_projector\.layers\.\d+\.mixer\.(in_proj|out_proj)"


# --------------------------------------------------------------------------------------------------------------------
# Stages and LoRA
# --------------------------------------------------------------------------------------------------------------------


def apply_training_stage(model, stage: str) -> dict[str, int]:
    """Sets `requires_grad` for one of the paper's training stages and returns parameter counts.

    - `"alignment"`: vision tower, LLM and LM head frozen; the temporal projector (pixel-shuffle Linear + Mamba stack)
      trains. The paper's stage 1 (on image-text pairs; images go through the projector as one-frame videos).
    - `"sft"`: everything trains (the paper's stages 2 and 3).

    Works on a `StormForConditionalGeneration` or a `StormModel`. Returns `{"trainable": n, "frozen": m}` parameters.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; use one of {sorted(STAGES)}.")
    if hasattr(model, "peft_config"):
        raise ValueError(
            "This is a PEFT model, whose adapters and `modules_to_save` decide what trains; use `storm_lora_config` "
            "options instead of a stage, or apply the stage to the base model before wrapping it."
        )
    trainable_modules = STAGES[stage]
    counts = {"trainable": 0, "frozen": 0}
    for name, parameter in model.named_parameters():
        train = any(module in name.split(".") for module in trainable_modules)
        parameter.requires_grad_(train)
        # Under DeepSpeed ZeRO-3 a parameter is partitioned (`numel()` 0 on this rank); `ds_numel` is its full size.
        counts["trainable" if train else "frozen"] += getattr(parameter, "ds_numel", parameter.numel())
    return counts


def storm_lora_config(
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    include_mamba: bool = False,
    train_projector: bool = True,
    **kwargs,
):
    """A `peft.LoraConfig` for STORM.

    LoRA adapters on the LLM's attention and MLP projections (regex `LLM_LORA_TARGETS`, which does not touch SigLIP).
    The temporal projector is fully trained and saved with the adapter (`modules_to_save`): it is the part STORM adds,
    randomly initialised in a converted checkpoint, and small.

    With `include_mamba=True`, the Mamba mixers' `in_proj`/`out_proj` get LoRA adapters too, and only the projector's
    input Linear is fully trained (PEFT cannot put adapters inside a module it also saves whole). With
    `train_projector=False` nothing is fully trained. Extra keyword arguments go to `LoraConfig`.
    """
    from peft import LoraConfig

    target_modules = f"({LLM_LORA_TARGETS})|({MAMBA_LORA_TARGETS})" if include_mamba else LLM_LORA_TARGETS
    if not train_projector:
        modules_to_save = None
    elif include_mamba:
        modules_to_save = ["temporal_projector.linear"]
    else:
        modules_to_save = ["temporal_projector"]
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------------------------
# Data collator
# --------------------------------------------------------------------------------------------------------------------


def clean_messages(messages: Sequence[dict]) -> list[dict]:
    """A deep copy of chat `messages` with the `None` fields that `datasets` adds to nested structs removed.

    A `datasets` column stores every content entry with the union of all keys (`{"type": "text", "text": "hi",
    "path": None, "video": None}`); the chat template and `apply_chat_template`'s media loading read a present `None`
    key as a value. Decoded frames stored as nested lists become uint8 arrays.
    """
    cleaned = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            entries = []
            for entry in content:
                entry = {key: value for key, value in entry.items() if value is not None}
                if entry.get("type") in ("video", "image") and isinstance(entry.get(entry["type"]), list):
                    entry[entry["type"]] = np.asarray(entry[entry["type"]], dtype=np.uint8)
                entries.append(entry)
            message["content"] = entries
        cleaned.append(copy.copy(message))
    return cleaned


@dataclass
class StormDataCollator:
    """Batches chat samples with videos and images for STORM training.

    Each feature holds a `messages` list in chat format (column name `messages_column`); its video entries carry a
    path (`{"type": "video", "path": "clip.mp4"}`) or decoded frames (`{"type": "video", "video": frames}`, an array
    `(num_frames, height, width, 3)` uint8 or nested lists of it, as stored by `datasets`). Other columns are ignored.

    The processor renders the chat template, decodes and samples the videos (`num_frames`, `fps` and any other
    `processor_kwargs`), expands the placeholders and pads. Returns the model inputs (`input_ids`, `attention_mask`,
    `pixel_values_videos` `(batch, max_total_frames, 3, H, W)` zero-padded, `video_num_frames`,
    `temporal_sampling_stride`, `pixel_values`, `num_images`, as present) and `labels` `(batch, sequence_length)`:
    the token ids of the assistant turns (the chat template's `{% generation %}` blocks: the answer and its
    `<|im_end|>`), -100 everywhere else (system and user turns, placeholders, padding).

    Args:
        processor: a `StormProcessor` whose chat template marks assistant turns with `{% generation %}`.
        num_frames: frames sampled per video (default: the video processor's `num_frames`).
        fps: frames sampled per second instead of `num_frames`.
        messages_column: the feature key holding the conversation.
        pad_to_multiple_of: pad the sequence length to a multiple of this.
        processor_kwargs: any other keyword arguments for the processor call.
    """

    processor: Any
    num_frames: int | None = None
    fps: float | None = None
    messages_column: str = "messages"
    pad_to_multiple_of: int | None = None
    processor_kwargs: dict | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features or self.messages_column not in features[0]:
            present = sorted(features[0]) if features else []
            raise KeyError(
                f"StormDataCollator needs a `{self.messages_column}` column but the batch has {present}. `Trainer` "
                "removes the columns the model's forward does not take: pass `TrainingArguments("
                "remove_unused_columns=False)` or use `StormTrainer`, which does it for you. With TRL's `SFTTrainer`, "
                "which also tokenizes the dataset as text up front, use `args=storm_sft_config(...)`."
            )
        conversations = [clean_messages(feature[self.messages_column]) for feature in features]
        for conversation in conversations:
            if not any(message["role"] == "assistant" for message in conversation):
                raise ValueError(
                    "A training conversation has no assistant turn, so it has nothing to learn; every sample needs the "
                    "answer as an `assistant` message."
                )
        kwargs = dict(self.processor_kwargs or {})
        if self.num_frames is not None:
            kwargs["num_frames"] = self.num_frames
        if self.fps is not None:
            kwargs["fps"] = self.fps
        if self.pad_to_multiple_of is not None:
            kwargs["pad_to_multiple_of"] = self.pad_to_multiple_of
        batch = self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, **kwargs},
        )
        batch.pop("video_metadata", None)
        assistant_mask = torch.as_tensor(batch.pop("assistant_masks")).bool() & batch["attention_mask"].bool()
        if not bool(assistant_mask.any(dim=1).all()):
            raise ValueError(
                "No assistant token was found in a sample: the processor's chat template must wrap assistant turns in "
                "`{% generation %}...{% endgeneration %}`."
            )
        batch["labels"] = torch.where(assistant_mask, batch["input_ids"], IGNORE_INDEX)
        return dict(batch)


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


def no_weight_decay_parameter_names(model) -> set[str]:
    """Names of the parameters marked `_no_weight_decay = True` (as mamba-ssm marks the Mamba `A_log` and `D`)."""
    return {name for name, parameter in model.named_parameters() if getattr(parameter, "_no_weight_decay", False)}


class StormTrainer(Trainer):
    """`Trainer` for STORM: keeps the raw chat columns for `StormDataCollator`, saves the processor with every
    checkpoint, keeps weight decay off the Mamba state parameters, and can give each part its own learning rate.

    - `Trainer` drops the dataset columns that the model's `forward` does not take (`remove_unused_columns=True`, the
      default), which would remove the `messages` the collator builds batches from. `StormTrainer` trains with a copy
      of `args` that turns that off (and logs it) and names `labels` as the label column, which `Trainer` cannot infer
      for a PEFT-wrapped model; the caller's `args` stay as they were.
    - `processing_class` defaults to the `StormDataCollator`'s processor, so that `save_model` and every checkpoint
      hold it next to the weights (a checkpoint without a processor cannot be loaded for inference). Without either,
      `StormTrainer` raises.
    - Weight decay applies to neither biases and norms (as in `Trainer`) nor parameters marked
      `_no_weight_decay = True` (the Mamba `A_log`, `D`, as in mamba-ssm).
    - `module_learning_rates`, e.g. `{"language_model": 2e-5, "lm_head": 2e-5}`: parameters whose name contains one of
      these modules (`vision_tower`, `temporal_projector`, `language_model`, `lm_head`) train with that learning rate,
      the rest with `args.learning_rate`; the schedule scales every group alike. NVILA trains its projector at a much
      higher rate than the LLM; when training from scratch, a slower LLM keeps it from settling on the answer prior
      before the visual features carry the answer (see `storm_hf.synthetic.train_temporal_task_model`).
    """

    def __init__(
        self,
        model=None,
        args=None,
        data_collator=None,
        *,
        processing_class=None,
        module_learning_rates: dict[str, float] | None = None,
        **kwargs,
    ):
        if args is not None:
            if args.remove_unused_columns:
                logger.info(
                    "StormTrainer: trains with `remove_unused_columns=False` to keep the chat columns for the collator."
                )
            label_names = ["labels"] if args.label_names is None else args.label_names
            args = replace(args, remove_unused_columns=False, label_names=label_names)
        if processing_class is None:
            processing_class = getattr(data_collator, "processor", None)
        if processing_class is None:
            raise ValueError(
                "StormTrainer saves the processor with the model: pass `processing_class=processor` (or a "
                "`StormDataCollator(processor)` as `data_collator`)."
            )
        self.module_learning_rates = dict(module_learning_rates or {})
        super().__init__(model, args, data_collator, processing_class=processing_class, **kwargs)

    def get_decay_parameter_names(self, model) -> list[str]:
        """`Trainer`'s decayed parameters (no biases, no norms) without those marked `_no_weight_decay`."""
        excluded = no_weight_decay_parameter_names(model)
        return [name for name in super().get_decay_parameter_names(model) if name not in excluded]

    def learning_rate_of(self, parameter_name: str) -> float:
        """A parameter's learning rate: the first `module_learning_rates` entry its name contains, else the default."""
        parts = parameter_name.split(".")
        for module, learning_rate in self.module_learning_rates.items():
            if module in parts:
                return learning_rate
        return self.args.learning_rate

    def create_optimizer(self, model=None):
        if not self.module_learning_rates or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay_parameters = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, bool], list] = {}
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((self.learning_rate_of(name), name in decay_parameters), []).append(parameter)
        grouped_parameters = [
            {"params": params, "lr": learning_rate, "weight_decay": self.args.weight_decay if decays else 0.0}
            for (learning_rate, decays), params in groups.items()
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if "params" in optimizer_kwargs or "model" in optimizer_kwargs:
            raise ValueError(
                f"`module_learning_rates` does not work with the `{self.args.optim}` optimizer; use AdamW."
            )
        self.optimizer = optimizer_cls(grouped_parameters, **optimizer_kwargs)
        return self.optimizer


# --------------------------------------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------------------------------------


def storm_sft_config(**kwargs):
    """A `trl.SFTConfig` for training STORM with TRL's `SFTTrainer` and `StormDataCollator`.

    TRL's defaults would tokenize every conversation once at start-up as text (the videos never reach the model) and
    then drop the `messages` column the collator needs; this sets, unless given:

    - `remove_unused_columns=False`: keep `messages` for the collator;
    - `dataset_kwargs={"skip_prepare_dataset": True}`: no up-front tokenization; the collator renders, decodes and
      tokenizes each batch;
    - `max_length=None`: no truncation, which would cut through a video's placeholder tokens.

    Keyword arguments go to `SFTConfig` (`output_dir`, `learning_rate`, `gradient_checkpointing`, ...). Pass
    `data_collator=StormDataCollator(processor)` and `processing_class=processor` to `SFTTrainer`, and for LoRA
    `peft_config=storm_lora_config()`: PEFT has no default LoRA targets for STORM.
    """
    from trl import SFTConfig

    settings = dict(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
    settings.update(kwargs)
    return SFTConfig(**settings)


__all__ = [
    "IGNORE_INDEX",
    "LLM_LORA_TARGETS",
    "MAMBA_LORA_TARGETS",
    "STAGES",
    "StormDataCollator",
    "StormTrainer",
    "apply_training_stage",
    "clean_messages",
    "no_weight_decay_parameter_names",
    "storm_lora_config",
    "storm_sft_config",
]
