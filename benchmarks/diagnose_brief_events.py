"""Are the brief-event questions of the temporal task learnable at all, and is their answer in the visual tokens?

In `bench_temporal_task.py` every arm learns `direction` in its first stage; the brief-event questions are learned
(or not) in the all-type second stage. This script looks at each brief-event question on its own, two ways:
(1) linear probes on the 8 visual tokens of randomly initialised models (Linear + T.Pool and STORM + T.Pool), on the
tokens concatenated and on their mean: is the answer there before training; (2) STORM + T.Pool and Linear + T.Pool
trained on that question alone, from scratch, `--steps` steps of 8 with the task's recipe (`temporal_task_config`,
learning rate 1e-3, cosine), greedy exact match on `--test` clips checked unseen by hash.

    python benchmarks/diagnose_brief_events.py   # 6 probes and 6 runs, 2 at a time, ~6 min on an idle 2-core machine
    python benchmarks/diagnose_brief_events.py --rendering small_flashes \
        --out benchmarks/results/brief_events_diagnosis_small_flashes.md   # flashing shapes of half-side 3-6 px
    python benchmarks/diagnose_brief_events.py --train 80 --test 6 --probe-clips 60 --steps 4 \
        --out /tmp/brief_events_diagnosis.md      # a quick check of the script

writes benchmarks/results/brief_events_diagnosis.md and .json through `common.write_results` (command, commit,
machine, load, versions).
"""

import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from common import RESULTS, start_run, write_results
from diagnose_temporal_task import BATCH_SIZE, probe_at_init, run_one


QUESTION_TYPES = ("first", "count", "return")
PRIOR_BOUND = {"first": 50.0, "count": 33.3, "return": 50.0}  # the best a bag of frames can do (README)
PROJECTORS = {2: "STORM (2 Mamba layers) + T.Pool", 0: "Linear + T.Pool"}
RENDERING_DESCRIPTIONS = {  # the renderings of diagnose_temporal_task.renderings() this script runs on
    "task": "the task's rendering (flashing shapes of half-side 7-10 px)",
    "small_flashes": "the rendering before the flashing shapes were enlarged (half-side 3-6 px, as the moving shapes)",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=800, help="training clips per question type")
    parser.add_argument("--test", type=int, default=64, help="test clips, checked unseen by hash")
    parser.add_argument("--steps", type=int, default=600, help="training steps of 8 clips per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--probe-clips", type=int, default=600, help="clips of each probe at initialisation")
    parser.add_argument("--rendering", choices=list(RENDERING_DESCRIPTIONS), default="task")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "brief_events_diagnosis.md", help="results file; its .json beside it"
    )
    args = parser.parse_args(argv)
    run = start_run(argv)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        probes = {
            (question, layers): pool.submit(probe_at_init, layers, args.probe_clips, question, 0, args.rendering)
            for question in QUESTION_TYPES
            for layers in PROJECTORS
        }
        runs = {
            (question, layers): pool.submit(
                run_one, args.rendering, None, args.seed, args.train, args.test, question, args.steps, layers
            )
            for question in QUESTION_TYPES
            for layers in PROJECTORS
        }
        probes = {key: future.result() for key, future in probes.items()}
        runs = {key: future.result() for key, future in runs.items()}
    headline = [
        "| question | projector | probe at init: 8 tokens concatenated | probe at init: their mean | trained: "
        "accuracy | bag-of-frames bound | train loss (run average) | train CPU s |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {question} | {PROJECTORS[layers]} | {100 * probes[question, layers]['concatenated']:.1f} "
            f"| {100 * probes[question, layers]['mean']:.1f} | {100 * run_['accuracy']:.1f} | {PRIOR_BOUND[question]} "
            f"| {run_['train_loss_run_average']} | {run_['train_cpu_seconds']} |"
            for (question, layers), run_ in runs.items()
        ),
    ]
    body = (
        f"Rendering: {RENDERING_DESCRIPTIONS[args.rendering]}. Each question alone: {args.train} training clips, "
        f"{args.steps} steps of {BATCH_SIZE} clips from scratch "
        f"(the task's recipe: `temporal_task_config`, learning rate 1e-3, cosine), seed {args.seed}, greedy exact "
        f"match on {args.test} test clips checked unseen by hash (overlap in the .json). Probes: logistic "
        f"regression on the 8 visual tokens of a randomly initialised model, {args.probe_clips} clips, held-out "
        "half; the bag-of-frames bound is the best any answer can do without the frames' order. "
        f"{args.jobs} runs at a time, each in a fresh process with 1 torch thread."
    )
    data = {
        "rendering": args.rendering,
        "runs": list(runs.values()),
        "probes_at_init": [
            {"question_type": question, "mamba_num_layers": layers, **accuracy}
            for (question, layers), accuracy in probes.items()
        ],
    }
    path = write_results(
        args.out.stem,
        "# Temporal task: are the brief-event questions learnable, and is their answer in the visual tokens?",
        body,
        data,
        run,
        headline="\n".join(headline),
        results_dir=args.out.parent,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
