"""Train a tiny STORM on the synthetic temporal task and save it with its processor (the `storm-hf demo` checkpoint).

    python examples/train_temporal_task.py --out src/storm_hf/demo_checkpoint --threads 1

Renders the task (`storm_hf.synthetic`: 4-frame videos of coloured shapes, questions about motion direction, which
colour appeared first, turning back, crossing the middle line, and a colour control), trains STORM (SigLIP -> Linear ->
2 bidirectional Mamba layers -> temporal pooling k=4 -> Qwen2, 0.9M parameters, 3.7 MB) with `StormTrainer`, then evaluates
greedy answers on a freshly rendered test set (another seed) and saves:

    <out>/config.json, model.safetensors, generation_config.json   the model (StormForConditionalGeneration)
    <out>/processor_config.json, chat_template.jinja, tokenizer*   the processor (StormProcessor, AutoProcessor)
    <out>/task_results.json                                        accuracy per question type, command, settings

Load it with:

    model = StormForConditionalGeneration.from_pretrained(out); processor = StormProcessor.from_pretrained(out)
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from storm_hf import StormForConditionalGeneration
from storm_hf.synthetic import (
    build_task_processor,
    build_task_tokenizer,
    evaluate_temporal_task,
    generate_temporal_task,
    temporal_task_config,
    train_temporal_task_model,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the trained model and processor")
    parser.add_argument("--data", type=Path, default=None, help="where to render the videos (default: a temporary dir)")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=1000, help="size of the fresh test set")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="vision tower and projector")
    parser.add_argument("--llm-lr", type=float, default=2e-4, help="LLM and LM head")
    parser.add_argument("--seed", type=int, default=0, help="training data and initialisation seed")
    parser.add_argument("--test-seed", type=int, default=1234, help="seed of the fresh test set")
    parser.add_argument("--mamba-layers", type=int, default=2, help="0 trains the model without a temporal encoder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "task_results.json").exists():
        raise SystemExit(f"{args.out} exists and is not a checkpoint of this script; pick another --out.")

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or Path(scratch)
        train = generate_temporal_task(data / "train", num_train=args.num_train, num_test=0, seed=args.seed)["train"]
        test = generate_temporal_task(data / "fresh_test", num_train=0, num_test=args.num_test, seed=args.test_seed)["test"]

        tokenizer = build_task_tokenizer()
        processor = build_task_processor(tokenizer)
        torch.manual_seed(args.seed)
        model = StormForConditionalGeneration(temporal_task_config(tokenizer, mamba_num_layers=args.mamba_layers))
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        start = time.perf_counter()
        result = train_temporal_task_model(
            model,
            processor,
            train,
            output_dir=Path(scratch) / "trainer",
            max_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            language_model_learning_rate=args.llm_lr,
            seed=args.seed,
            use_cpu=not torch.cuda.is_available(),
        )
        seconds = time.perf_counter() - start
        scores = evaluate_temporal_task(model, processor, test)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    report = {
        "test_accuracy": {key: round(value, 4) for key, value in scores.items()},
        "fresh_test_set": {"num_test": args.num_test, "seed": args.test_seed},
        "training": {
            "num_train": args.num_train,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "llm_learning_rate": args.llm_lr,
            "seed": args.seed,
            "mamba_num_layers": args.mamba_layers,
            "final_train_loss": round(result.training_loss, 4),
            "train_seconds": round(seconds),
        },
        "command": "python examples/train_temporal_task.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (args.out / "task_results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
