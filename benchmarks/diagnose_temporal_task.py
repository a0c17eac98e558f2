"""Why no arm of `bench_temporal_task.py` learned at first, and what the recipe changed: STORM + T.Pool on the
`direction` question alone, with the LLM initialised as before (Qwen2's `initializer_range` 0.02) or as the task now
initialises it (`temporal_task_config`: 1/sqrt(128) = 0.088), on the task's first rendering or its current one.

Each run trains STORM + T.Pool k=4 (32 frames) on `--train` clips of the `direction` question for 300 steps of 8 clips
(learning rate 1e-3 everywhere, cosine, 30 warm-up steps) and scores greedy exact match (left/right, bag-of-frames bound
50%) on `--test` clips checked unseen by content hash. Before training, linear probes on the visual tokens of randomly
initialised models measure what the LLM is given. The first rendering (shapes of half-side 2-4 px on gradients of
0-140, 0-2 bright distractors, noise up to 8) is `storm_hf.synthetic.FIRST_RENDERING`, passed to the clip drawing
like the task's `TASK_RENDERING`.

    python benchmarks/diagnose_temporal_task.py   # 2 probes and 6 runs, 2 at a time, ~10 min on an idle 2-core machine
    python benchmarks/diagnose_temporal_task.py --train 80 --test 8 --probe-clips 60 --steps 4 \
        --out /tmp/temporal_task_diagnosis.md       # a quick check of the script

writes benchmarks/results/temporal_task_diagnosis.md and .json through `common.write_results` (command, commit,
machine, load, versions).
"""

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from common import RESULTS, start_run, write_results


QWEN2_INITIALIZER_RANGE = 0.02  # the LLM's initialisation before the recipe (Qwen2's default)
RUNS = [  # (rendering, LLM initializer_range or None for the task's, seed): 300 steps of 8 clips each
    ("first", QWEN2_INITIALIZER_RANGE, 1),
    ("first", None, 1),
    ("task", QWEN2_INITIALIZER_RANGE, 1),
    ("task", None, 0),
    ("task", None, 1),
    ("task", None, 2),
]
STEPS, BATCH_SIZE = 300, 8


def renderings() -> dict:
    """The renderings the diagnoses compare, by name (`storm_hf.synthetic.render.Rendering`)."""
    from storm_hf.synthetic import FIRST_RENDERING, SMALL_FLASHES_RENDERING, TASK_RENDERING

    return {"task": TASK_RENDERING, "first": FIRST_RENDERING, "small_flashes": SMALL_FLASHES_RENDERING}


def run_one(
    rendering: str,
    initializer_range: float | None,
    seed: int,
    num_train: int,
    num_test: int,
    question_type: str = "direction",
    steps: int = STEPS,
    mamba_num_layers: int = 2,
) -> dict:
    """Trains and scores STORM + T.Pool (`mamba_num_layers=0`: Linear + T.Pool) on the `question_type` clips of
    `rendering` alone."""
    import torch

    torch.set_num_threads(1)
    drawn_as = renderings()[rendering]
    batch = BATCH_SIZE
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

    types = (question_type,)
    train = list(draw_clips(num_train, np.random.default_rng([seed, 0]), question_types=types, rendering=drawn_as))
    seen = ClipHashes.of(train)
    test, _ = unseen_clips(num_test, np.random.default_rng([seed, 1]), seen, question_types=types, rendering=drawn_as)
    tokenizer = build_task_tokenizer()
    processor = build_task_processor(tokenizer)
    config = temporal_task_config(tokenizer, mamba_num_layers=mamba_num_layers)
    if initializer_range is not None:
        config.text_config.initializer_range = initializer_range
    torch.manual_seed(seed)
    model = StormForConditionalGeneration(config)
    start = time.process_time()
    output = train_temporal_task_model(
        model,
        processor,
        train,
        f"/tmp/storm_diagnosis/{rendering}_{initializer_range}_{seed}_{question_type}_{mamba_num_layers}",
        max_steps=steps,
        batch_size=batch,
        seed=seed,
        use_cpu=True,
        logging_steps=max(1, steps // 10),
    )
    cpu_seconds = time.process_time() - start
    accuracy = evaluate_temporal_task(model, processor, test)[question_type]
    return {
        "rendering": rendering,
        "question_type": question_type,
        "mamba_num_layers": mamba_num_layers,
        "initializer_range": config.text_config.initializer_range,
        "seed": seed,
        "steps": steps,
        "batch_size": batch,
        "train_clips": num_train,
        "test_clips": num_test,
        "test_overlap": seen.overlap(test),
        "train_loss_run_average": round(output.training_loss, 4),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "accuracy": round(accuracy, 4),
    }


def probe_at_init(
    mamba_num_layers: int, num_clips: int, question_type: str, seed: int = 0, rendering: str = "task"
) -> dict[str, float]:
    """Held-out accuracy of a logistic regression on the visual tokens of a randomly initialised model (what the LLM
    receives) for clips of `rendering`: on the concatenated 8 tokens (a readout that knows each token's position) and
    on their mean (the position-blind readout an LLM with near-uniform attention computes at first). Trained on half
    the clips."""
    import torch

    torch.set_num_threads(1)
    from storm_hf import StormForConditionalGeneration
    from storm_hf.synthetic import build_task_processor, build_task_tokenizer, draw_clips, temporal_task_config

    tokenizer = build_task_tokenizer()
    processor = build_task_processor(tokenizer)
    torch.manual_seed(seed)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer, mamba_num_layers=mamba_num_layers)).eval()
    rendered_as = renderings()[rendering]
    rows = list(
        draw_clips(num_clips, np.random.default_rng([seed, 5]), question_types=(question_type,), rendering=rendered_as)
    )
    tokens = []
    with torch.no_grad():
        for start in range(0, num_clips, 50):
            batch = rows[start : start + 50]
            videos = processor.video_processor([row["frames"] for row in batch], return_tensors="pt")
            tokens += model.model.get_video_features(
                videos["pixel_values_videos"], video_num_frames=videos["video_num_frames"].reshape(len(batch), -1)
            ).pooler_output
    tokens = torch.stack(tokens)  # (num_clips, 8, hidden_size)
    answers = sorted({row["answer"] for row in rows})
    labels = torch.tensor([answers.index(row["answer"]) for row in rows])
    half = num_clips // 2
    accuracies = {}
    for readout, features in (("concatenated", tokens.flatten(1)), ("mean", tokens.mean(1))):
        features = (features - features[:half].mean(0)) / (features[:half].std(0) + 1e-6)
        weight = torch.zeros(features.shape[1], len(answers), requires_grad=True)
        bias = torch.zeros(len(answers), requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
        for _ in range(500):
            optimizer.zero_grad()
            logits = features[:half] @ weight + bias
            loss = torch.nn.functional.cross_entropy(logits, labels[:half]) + 1e-2 * weight.pow(2).sum()
            loss.backward()
            optimizer.step()
        predictions = (features[half:] @ weight + bias).argmax(1)
        accuracies[readout] = round((predictions == labels[half:]).float().mean().item(), 4)
    return accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=800, help="training clips")
    parser.add_argument("--test", type=int, default=64, help="test clips, checked unseen by hash")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps of 8 clips per run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--probe-clips", type=int, default=600, help="clips of the probe at initialisation")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "temporal_task_diagnosis.md", help="results file; its .json beside it"
    )
    args = parser.parse_args(argv)
    run = start_run(argv)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        probes = {layers: pool.submit(probe_at_init, layers, args.probe_clips, "direction") for layers in (0, 2)}
        probes = {layers: future.result() for layers, future in probes.items()}
        futures = [pool.submit(run_one, *run_, args.train, args.test, "direction", args.steps) for run_ in RUNS]
        results = [future.result() for future in futures]
    overlap = sum(counts["clips"] + counts["scenes"] for r in results for counts in r["test_overlap"].values())
    headline = [
        "| rendering | LLM initializer_range | seed | steps x batch | train loss (run average) | train CPU s "
        "| accuracy |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['rendering']} | {r['initializer_range']:.3f} | {r['seed']} | {r['steps']} x {r['batch_size']} | "
            f"{r['train_loss_run_average']} | {r['train_cpu_seconds']} | {100 * r['accuracy']:.1f} |"
            for r in results
        ),
    ]
    body = [
        (
            f"STORM + T.Pool k=4, {args.train} training clips of the `direction` question, {args.steps} steps of "
            f"{BATCH_SIZE} clips, learning rate 1e-3 (cosine, 30 warm-up steps), greedy exact match on {args.test} "
            "test clips checked unseen by hash (test clips sharing a clip or a scene with training, all runs: "
            f"{overlap}); left/right, bag-of-frames bound 50%. "
            "Rendering `first`: shapes of half-side 2-4 px on gradients of 0-140, 0-2 bright distractors, noise up to "
            "8; `task`: the current `storm_hf.synthetic.render` (half-side 3-6 px, gradients of 0-70, 0-1 dimmer "
            "distractors, noise up to 4). LLM `initializer_range`: 0.02 (Qwen2's default, sized for 3584-wide layers) "
            f"or 0.088 = 1/sqrt(128) (`temporal_task_config`). {args.jobs} runs at a time, each in a fresh process "
            "with 1 torch thread."
        ),
        "",
        (
            "Linear probes on the 8 visual tokens of a randomly initialised model (`temporal_task_config`, before any "
            f"training), {args.probe_clips} clips of the task's rendering, held-out half:"
        ),
        "",
        "| projector | probe on the 8 tokens concatenated | probe on their mean |",
        "|---|---|---|",
        *(
            f"| {'STORM (2 Mamba layers)' if layers else 'Linear'} + T.Pool | {100 * accuracy['concatenated']:.1f} | "
            f"{100 * accuracy['mean']:.1f} |"
            for layers, accuracy in probes.items()
        ),
    ]
    path = write_results(
        args.out.stem,
        "# Temporal task: why STORM + T.Pool did not learn in a short run, and what the recipe changed",
        "\n".join(body),
        {"runs": results, "probes_at_init": probes},
        run,
        headline="\n".join(headline),
        results_dir=args.out.parent,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
