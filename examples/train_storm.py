"""Train STORM with `StormTrainer`, on one device or many (DDP, FSDP2, DeepSpeed ZeRO-3 through accelerate).

    accelerate launch --config_file examples/accelerate/fsdp2.yaml examples/train_storm.py \\
        --model checkpoints/storm-composed --dataset data/train.jsonl --stage alignment --output-dir out/alignment

    python examples/train_storm.py --model src/storm_hf/synthetic/demo_checkpoint --max-steps 20 \\
        --output-dir /tmp/storm-smoke

Nothing is downloaded: `--model` is a local STORM checkpoint with its processor (from `storm-hf compose`, `storm-hf
convert` or an earlier stage of this script). `--dataset` is a `datasets.save_to_disk` directory or a JSON / JSON-lines
file whose rows hold `messages` in chat format (`{"type": "video", "path": "clip.mp4"}` entries and the assistant's
answer); without it, `--num-synthetic` clips of the synthetic temporal task (`storm_hf.synthetic`) are rendered, for a
smoke run. `--stage` is one of the paper's stages (`storm_hf.training.STAGES`: `alignment` trains the temporal
projector only, `sft` everything); `--lora` trains LoRA adapters on the LLM (`storm_lora_config`) instead. The model and
its processor are saved to `--output-dir`.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoProcessor, TrainingArguments

from storm_hf import StormForConditionalGeneration
from storm_hf.training import STAGES, StormDataCollator, StormTrainer, apply_training_stage, storm_lora_config


def load_dataset(args, process_index: int):
    import datasets

    if args.dataset is None:  # the first process renders the clips, the others read them
        from storm_hf.synthetic import generate_temporal_task, load_temporal_task

        data_dir = Path(args.output_dir) / "synthetic_task"
        if process_index == 0:
            return generate_temporal_task(data_dir, num_train=args.num_synthetic, num_test=0, seed=args.seed)["train"]
        return load_temporal_task(data_dir)["train"]
    if args.dataset.is_dir():
        dataset = datasets.load_from_disk(str(args.dataset))
        return dataset["train"] if isinstance(dataset, datasets.DatasetDict) else dataset
    return datasets.load_dataset("json", data_files=str(args.dataset), split="train")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="local STORM checkpoint directory (with processor)")
    parser.add_argument("--dataset", type=Path, default=None, help="save_to_disk directory or .json/.jsonl file")
    parser.add_argument("--num-synthetic", type=int, default=64, help="synthetic clips to render without --dataset")
    parser.add_argument("--stage", choices=sorted(STAGES), default="sft")
    parser.add_argument("--lora", action="store_true", help="LoRA on the LLM, projector fully trained")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=-1, help="-1: train --epochs epochs")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4, help="per device")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--num-frames", type=int, default=None, help="frames per video (default: the processor's)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="DDP / ZeRO-3; FSDP: see fsdp2.yaml")
    parser.add_argument(
        "--ddp-find-unused-parameters",
        choices=("true", "false"),
        default=None,
        help="DDP: look for parameters a step leaves unused (default: Trainer's, on unless activation checkpointing)",
    )
    parser.add_argument("--cpu", action="store_true", help="train on CPU (gloo) even when CUDA is available")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    use_bf16 = not args.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # Before the model is loaded: with DeepSpeed ZeRO-3, from_pretrained then creates it partitioned.
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a fraction of the steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=use_bf16,
        activation_checkpointing=args.activation_checkpointing,
        ddp_find_unused_parameters={"true": True, "false": False, None: None}[args.ddp_find_unused_parameters],
        use_cpu=args.cpu,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
    )
    processor = AutoProcessor.from_pretrained(args.model)
    model = StormForConditionalGeneration.from_pretrained(args.model, dtype=torch.bfloat16 if use_bf16 else None)
    if args.lora:
        import peft

        model = peft.get_peft_model(model, storm_lora_config())
    else:
        counts = apply_training_stage(model, args.stage)
        if training_args.process_index == 0:
            print(f"stage {args.stage}: {counts['trainable']:,} trainable, {counts['frozen']:,} frozen parameters")

    with training_args.main_process_first(desc="dataset"):
        dataset = load_dataset(args, training_args.process_index)
    trainer = StormTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=StormDataCollator(processor, num_frames=args.num_frames),
    )
    result = trainer.train()
    trainer.save_model()  # the model (gathered from its shards) and the processor, in --output-dir
    if trainer.is_world_process_zero():
        print(f"final training loss {result.training_loss:.4f}, {result.global_step} steps; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
