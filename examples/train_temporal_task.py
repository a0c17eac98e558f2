"""Train a tiny STORM on the synthetic temporal task and save it with its processor (the `storm-hf demo` checkpoint).

    python examples/train_temporal_task.py --out src/storm_hf/synthetic/demo_checkpoint --threads 1

Renders the task (`storm_hf.synthetic`: 32-frame clips of coloured shapes; which colour flashes first, how many times
the shape flashes, does it come back, which way does it move), trains STORM (SigLIP -> Linear -> 2 bidirectional Mamba
layers -> temporal pooling k=4 -> Qwen2, under 1M parameters) with `StormTrainer`, then evaluates greedy answers on
test clips drawn from another seed and checked, by content hash, not to be training clips, and saves:

    <out>/config.json, model.safetensors, generation_config.json   the model (StormForConditionalGeneration)
    <out>/processor_config.json, chat_template.jinja, tokenizer*   the processor (StormProcessor, AutoProcessor)
    <out>/train_hashes.json                                        content hashes of the training clips
    <out>/task_results.json                                        accuracy per question type, overlap check, command

Load it with `AutoModelForImageTextToText.from_pretrained(out)` and `AutoProcessor.from_pretrained(out)` after
`import storm_hf` (the checkpoint has no `auto_map`: it is not a `trust_remote_code` checkpoint).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from storm_hf import StormForConditionalGeneration
from storm_hf.synthetic import (
    ClipHashes,
    build_task_processor,
    build_task_tokenizer,
    draw_clips,
    evaluate_temporal_task,
    temporal_task_config,
    train_temporal_task_model,
    unseen_clips,
)
from storm_hf.synthetic.demo import save_demo_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the trained model and processor")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=200, help="size of the unseen test set")
    parser.add_argument(
        "--first-stage-steps", type=int, default=600, help="steps on the direction question alone, before --steps"
    )
    parser.add_argument("--steps", type=int, default=2400, help="steps on every question type")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="vision tower and projector")
    parser.add_argument("--llm-lr", type=float, default=None, help="LLM and LM head (default: --lr)")
    parser.add_argument("--seed", type=int, default=0, help="training data and initialisation seed")
    parser.add_argument("--test-seed", type=int, default=1234, help="seed of the test set")
    parser.add_argument("--mamba-layers", type=int, default=2, help="0 trains the model without a temporal encoder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "task_results.json").exists():
        raise SystemExit(f"{args.out} exists and is not a checkpoint of this script; pick another --out.")

    train = list(draw_clips(args.num_train, np.random.default_rng([args.seed, 0])))
    seen = ClipHashes.of(train)
    test, rejected = unseen_clips(args.num_test, np.random.default_rng([args.test_seed, 1]), seen)
    tokenizer = build_task_tokenizer()
    processor = build_task_processor(tokenizer)
    torch.manual_seed(args.seed)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer, mamba_num_layers=args.mamba_layers))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result = train_temporal_task_model(
            model,
            processor,
            train,
            output_dir=scratch,
            max_steps=args.steps,
            first_stage_steps=args.first_stage_steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            language_model_learning_rate=args.llm_lr,
            seed=args.seed,
            use_cpu=not torch.cuda.is_available(),
        )
    seconds = time.perf_counter() - start
    scores = evaluate_temporal_task(model, processor, test)

    args.out.mkdir(parents=True, exist_ok=True)
    save_demo_checkpoint(model, processor, args.out, seen)
    report = {
        "test_accuracy": {key: round(value, 4) for key, value in scores.items()},
        "test_set": {
            "num_test": args.num_test,
            "seed": args.test_seed,
            "candidates_rejected_as_training_clips": rejected,
            "overlap_with_training_clips": seen.overlap(test),
        },
        "training": {
            "num_train": args.num_train,
            "first_stage_steps": args.first_stage_steps,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "llm_learning_rate": args.llm_lr,
            "seed": args.seed,
            "mamba_num_layers": args.mamba_layers,
            "train_loss_run_average": round(result.training_loss, 4),
            "train_seconds": round(seconds),
        },
        "command": "python examples/train_temporal_task.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (args.out / "task_results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
