"""Does the Mamba temporal projector put temporal context into the tokens? STORM vs the same model without it.

Trains, with the same budget (steps, batch, learning rate, seed, data), two tiny models on the synthetic temporal task
(`storm_hf.synthetic`) and reports greedy exact-match test accuracy per question type:

- `storm`: pixel-shuffle -> Linear -> 2 bidirectional Mamba layers -> temporal pooling k=4 -> Qwen2;
- `no_temporal_encoder`: the same with `mamba_num_layers=0` (pixel-shuffle -> Linear -> temporal pooling k=4 -> Qwen2).

Videos have 4 frames of one token each, so temporal pooling k=4 turns each video into one LLM token in both arms:
without the Mamba that token is the average of the frames' tokens, an unordered bag, which cannot answer
order-dependent questions.

    python benchmarks/bench_temporal_task.py   # both arms side by side, ~15-25 min on 2 CPU cores;
                                               # writes benchmarks/results/temporal_task.md (+ .json)
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from storm_hf import StormForConditionalGeneration
from storm_hf.synthetic import (
    BAG_OF_FRAMES_CHANCE,
    ORDER_DEPENDENT_TYPES,
    QUESTION_TYPES,
    build_task_processor,
    build_task_tokenizer,
    evaluate_temporal_task,
    generate_temporal_task,
    load_temporal_task,
    temporal_task_config,
    train_temporal_task_model,
)


ARMS = {"storm": 2, "no_temporal_encoder": 0}  # arm -> mamba_num_layers


def load_or_generate(data_dir: Path, num_train: int, num_test: int, seed: int):
    wanted = dict(num_train=num_train, num_test=num_test, seed=seed, question_types=list(QUESTION_TYPES))
    task_file = data_dir / "task.json"
    if task_file.exists() and all(json.loads(task_file.read_text()).get(k) == v for k, v in wanted.items()):
        return load_temporal_task(data_dir)
    return generate_temporal_task(data_dir, num_train=num_train, num_test=num_test, seed=seed)


def run_arm(name, num_layers, tokenizer, processor, dataset, args):
    torch.manual_seed(args.seed)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer, mamba_num_layers=num_layers))
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    start = time.perf_counter()
    result = train_temporal_task_model(
        model,
        processor,
        dataset["train"],
        output_dir=args.data / f"trainer_{name}",
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        language_model_learning_rate=args.llm_lr,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    train_seconds = time.perf_counter() - start
    scores = evaluate_temporal_task(model, processor, dataset["test"])
    print(f"{name}: {json.dumps({k: round(v, 3) for k, v in scores.items()})} ({train_seconds:.0f} s)", flush=True)
    return dict(scores=scores, train_seconds=train_seconds, train_loss=result.training_loss, parameters=num_parameters)


def write_report(path: Path, results: dict, args, command: str):
    storm, linear = results["storm"], results["no_temporal_encoder"]
    lines = [
        "# Synthetic temporal task: STORM vs no temporal encoder",
        "",
        "Greedy exact-match accuracy on the test split (`storm_hf.synthetic`). Both arms: the same tiny model, data, "
        f"steps ({args.steps}), batch ({args.batch_size}), learning rates ({args.lr} vision and projector, {args.llm_lr} "
        f"LLM; cosine) and seed ({args.seed}); 4-frame 64 px videos, one token per frame, temporal pooling k=4: each "
        "video reaches the LLM as one token.",
        "",
        "| question type | best a bag of frames can do | STORM (Mamba projector) | no temporal encoder | difference |",
        "|---|---|---|---|---|",
    ]
    for question_type in (*QUESTION_TYPES, "order_dependent"):
        chance = (
            sum(BAG_OF_FRAMES_CHANCE[t] for t in ORDER_DEPENDENT_TYPES) / len(ORDER_DEPENDENT_TYPES)
            if question_type == "order_dependent"
            else BAG_OF_FRAMES_CHANCE[question_type]
        )
        a, b = storm["scores"][question_type], linear["scores"][question_type]
        label = "**order-dependent (mean)**" if question_type == "order_dependent" else question_type
        if question_type == "colour":
            label += " (control: one frame answers it)"
        lines.append(f"| {label} | {chance:.0%} | {a:.1%} | {b:.1%} | {100 * (a - b):+.1f} pts |")
    lines += [
        "",
        f"Test rows: {args.num_test} ({args.num_test // len(QUESTION_TYPES)} per type); train rows: {args.num_train}.",
        f"Parameters: STORM {storm['parameters']:,}, no temporal encoder {linear['parameters']:,}.",
        f"Training time: STORM {storm['train_seconds']:.0f} s, no temporal encoder {linear['train_seconds']:.0f} s "
        f"({args.threads} torch thread per arm, arms side by side, {platform.machine()}, a shared machine: times are "
        "indicative). Training loss averaged over the run: "
        f"STORM {storm['train_loss']:.3f}, no temporal encoder {linear['train_loss']:.3f}.",
        "",
        "Reproduce:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    (path.with_suffix(".json")).write_text(json.dumps(results, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/storm_temporal_task"), help="where the videos go")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="vision tower and projector")
    parser.add_argument("--llm-lr", type=float, default=2e-4, help="LLM and LM head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    parser.add_argument("--jobs", type=int, default=2, help="arms trained side by side (one process each)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "temporal_task.md")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)
    dataset = load_or_generate(args.data, args.num_train, args.num_test, args.seed)

    result_file = lambda arm: args.data / f"result_{arm}.json"  # noqa: E731
    if len(args.arms) > 1 and args.jobs > 1:  # one process per arm, the same arguments otherwise
        base = [a for a in argv if a not in args.arms and a != "--arms"]
        worker_args = ["--jobs", "1", "--out", str(args.data / "unused.md")]
        workers = [subprocess.Popen([sys.executable, __file__, *base, "--arms", arm, *worker_args]) for arm in args.arms]
        if any(worker.wait() for worker in workers):
            raise SystemExit("An arm failed; see its output above.")
        results = {arm: json.loads(result_file(arm).read_text()) for arm in args.arms}
    else:
        tokenizer = build_task_tokenizer()
        processor = build_task_processor(tokenizer)
        results = {}
        for arm in args.arms:
            results[arm] = run_arm(arm, ARMS[arm], tokenizer, processor, dataset, args)
            result_file(arm).write_text(json.dumps(results[arm], indent=2) + "\n")
    if set(results) == set(ARMS) and args.out.name != "unused.md":
        command = "python benchmarks/bench_temporal_task.py " + " ".join(argv)
        write_report(args.out, results, args, command.strip())
        print(args.out.read_text())


if __name__ == "__main__":
    main()
