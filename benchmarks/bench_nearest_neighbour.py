"""What memory alone scores on the temporal-task replica: a 1-nearest-neighbour classifier over the training clips'
foreground pixels, with no learning at all, on the same training and test clips as `bench_temporal_task.py`.

Clips are drawn exactly as `bench_temporal_task.py --size full` draws them: per seed, `draw_clips(4000,
default_rng([seed, 0]))`; one test set, `unseen_clips(800, default_rng([10000, 1]), <every seed's training hashes>)`.
A clip's foreground is its frames minus their per-pixel median over time (the static background, rounded down),
`(32 * 32 * 32 * 3,)` values. Each test clip takes the answer of the training clip of the same question type nearest
to it in Euclidean distance. If this classifier scores as high as a trained model, the test clips are close enough
to training clips that template matching answers them: the replica then shows that a model can fit the task, not that
it generalises beyond memory.

    python benchmarks/bench_nearest_neighbour.py                 # 3 seeds x 4000 training clips, 800 test clips
    python benchmarks/bench_nearest_neighbour.py --num-train 400 --num-test 40 --seeds 0   # a quick check

writes benchmarks/results/nearest_neighbour.md and .json.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).parent))
from common import start_run, write_results  # noqa: E402


def foreground(frames: np.ndarray) -> np.ndarray:
    """`(num_frames, H, W, 3)` uint8 -> the frames minus their per-pixel median over time, flattened, int16 (exact:
    a median of uint8 values is a whole or half level, so it is taken rounded down; 12000 clips hold 2.4 GB)."""
    frames = frames.astype(np.int16)
    return (frames - np.floor(np.median(frames, axis=0, keepdims=True)).astype(np.int16)).reshape(-1)


def nearest_neighbour_answers(train_features: np.ndarray, train_answers: list[str], test_features: np.ndarray):
    """The answer of each test row's nearest training row (squared Euclidean distance, ties to the first)."""
    distances = (
        (test_features**2).sum(1)[:, None] - 2 * test_features @ train_features.T + (train_features**2).sum(1)[None]
    )
    return [train_answers[index] for index in distances.argmin(1)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=4000, help="training clips per seed")
    parser.add_argument("--num-test", type=int, default=200, help="test clips per question type")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="nearest_neighbour", help="results file name in benchmarks/results/")
    args = parser.parse_args(argv)
    run = start_run(argv)

    from storm_hf.synthetic import BAG_OF_FRAMES_CHANCE, QUESTION_TYPES, ClipHashes, draw_clips, unseen_clips

    train, seen = {}, ClipHashes()
    for seed in args.seeds:
        rows = list(draw_clips(args.num_train, np.random.default_rng([seed, 0])))
        seen.clip_hashes |= ClipHashes.of(rows).clip_hashes
        seen.bag_hashes |= ClipHashes.of(rows).bag_hashes
        train[seed] = [(row["question_type"], foreground(row["frames"]), row["answer"]) for row in rows]
    test, _ = unseen_clips(args.num_test * len(QUESTION_TYPES), np.random.default_rng([10_000, 1]), seen)
    overlap = seen.overlap(test)
    if any(counts["clips"] or counts["scenes"] for counts in overlap.values()):
        raise RuntimeError(f"Test clips overlap the training clips: {overlap}")

    accuracy = {}  # seed -> question type -> accuracy
    for seed, rows in train.items():
        accuracy[seed] = {}
        for question_type in QUESTION_TYPES:
            of_type = [(features, answer) for kind, features, answer in rows if kind == question_type]
            tests = [row for row in test if row["question_type"] == question_type]
            predicted = nearest_neighbour_answers(
                np.stack([features for features, _ in of_type]).astype(np.float32),
                [answer for _, answer in of_type],
                np.stack([foreground(row["frames"]) for row in tests]).astype(np.float32),
            )
            accuracy[seed][question_type] = float(np.mean([p == row["answer"] for p, row in zip(predicted, tests)]))
        accuracy[seed]["all"] = statistics.mean(accuracy[seed][t] for t in QUESTION_TYPES)
        print(seed, accuracy[seed], flush=True)

    def cell(key):
        values = [100 * accuracy[seed][key] for seed in args.seeds]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    bound = 100 * statistics.mean(BAG_OF_FRAMES_CHANCE[t] for t in QUESTION_TYPES)
    headline = "\n".join(
        [
            "| classifier | " + " | ".join(QUESTION_TYPES) + " | all |",
            "|---|" + "---|" * (len(QUESTION_TYPES) + 1),
            "| 1-nearest training clip (foreground pixels, no learning) | "
            + " | ".join(cell(t) for t in (*QUESTION_TYPES, "all"))
            + " |",
            "| bag of frames (best possible) | "
            + " | ".join(f"{100 * BAG_OF_FRAMES_CHANCE[t]:.1f}" for t in QUESTION_TYPES)
            + f" | {bound:.1f} |",
        ]
    )
    body = (
        f"{args.num_train} training clips per seed (seeds {args.seeds}), {args.num_test} test clips per question type "
        f"(one test set, checked unseen by content hash: {overlap}). Accuracy in %, mean ± standard deviation over the "
        "seeds' training sets. See the script's docstring for the method."
    )
    write_results(
        args.name,
        "# Temporal task: what a 1-nearest-neighbour classifier scores",
        body,
        {"settings": vars(args), "accuracy_per_seed": accuracy, "test_overlap_checked": overlap},
        run,
        headline=headline,
    )


if __name__ == "__main__":
    main()
