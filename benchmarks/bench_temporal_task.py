"""STORM's mechanism on synthetic long videos: a small replica of the paper's Table 2.

Every arm is the same tiny model (`storm_hf.synthetic.temporal_task_config`) trained with the same data, steps, batch,
learning rates and seeds on the synthetic temporal task (32-frame clips whose answers depend on the order of the frames
only), and reaches the LLM with the same number of visual tokens (8 per clip, one token per frame before compression):

| arm | temporal projector | frames | compression | paper |
|---|---|---|---|---|
| `storm_tpool` | Linear -> 2 bidirectional Mamba layers | 32 | T.Pool k=4 | STORM + T.Pool |
| `linear_tpool` | Linear | 32 | T.Pool k=4 | VILA baseline + T.Pool |
| `linear_subsample` | Linear | 8 (uniform) | none | VILA baseline on fewer frames |
| `storm_subsample` | Linear -> 2 bidirectional Mamba layers | 8 (uniform) | none | STORM on fewer frames |
| `causal_storm_tpool` | Linear -> 2 causal Mamba layers | 32 | T.Pool k=4 | streaming STORM + T.Pool |

and, evaluation only, test-time temporal sampling s=2 and s=4 (keep every s-th pooled token: 4 and 2 visual tokens)
on the `storm_tpool` and `linear_tpool` models trained at s=1.

The test clips are drawn once for all arms and seeds and checked by content hash (`storm_hf.synthetic.ClipHashes`)
against the training clips of every seed: none equals a training clip up to noise, none reorders a training scene. The
results report, per question type, the candidates rejected and the overlap left (0), and how many distinct clips and
scenes the task's scene space gave in a separate sample of draws.

What memory alone scores on the same clips is a row of the same table: each test clip answered with the answer of the
training clip of its question type nearest to it in foreground pixels (`foreground`: the frames minus their per-pixel
median over time), with no learning, once per seed's training set. If it scores as high as a trained arm, the test
clips are near enough to training clips for template matching to answer them: the arms then show that a model fits the
task, not that it generalises beyond memory.

    python benchmarks/bench_temporal_task.py --size full      # 4000 clips/seed, 600 + 2400 steps: 52 min at load 1-3
    python benchmarks/bench_temporal_task.py --size reduced   # 800 clips/seed, 300 + 100 steps: a quick look

writes benchmarks/results/temporal_task.md, .json and .png (accuracy vs visual tokens per arm) through
`common.write_results`. Each (arm, seed) run is one process with one torch thread (`--jobs` at a time); clips, the
nearest-neighbour accuracies and finished runs are kept in `--data`, in a folder named after a hash of the settings and
the rendering, and reused by a rerun only when both are unchanged.
"""

import argparse
import hashlib
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, start_run, write_results  # noqa: E402


LEARNING_RATE = 1e-3  # every part, the LLM included: short runs need the LLM to learn the answer format fast


@dataclass(frozen=True)
class Arm:
    """A trained arm: the model's projector and compression, and the frames the processor samples per clip."""

    label: str
    mamba_num_layers: int
    temporal_pool_size: int
    num_frames: int
    mamba_bidirectional: bool = True
    test_time_strides: tuple[int, ...] = ()


ARMS = {
    "storm_tpool": Arm("STORM + T.Pool", 2, 4, 32, test_time_strides=(2, 4)),
    "linear_tpool": Arm("Linear + T.Pool (VILA baseline)", 0, 4, 32, test_time_strides=(2, 4)),
    "linear_subsample": Arm("Linear, 8 uniformly sampled frames", 0, 1, 8),
    "storm_subsample": Arm("STORM, 8 uniformly sampled frames", 2, 1, 8),
    "causal_storm_tpool": Arm("causal STORM + T.Pool", 2, 4, 32, mamba_bidirectional=False),
}
SIZES = {
    # steps x batch samples of num_train training clips; num_test test clips per question type
    "full": dict(
        num_train=4000,
        num_test=200,
        first_stage_steps=600,
        steps=2400,
        batch_size=8,
        seeds=(0, 1, 2),
        distinct_draws=2000,
    ),
    "reduced": dict(
        num_train=800, num_test=50, first_stage_steps=300, steps=100, batch_size=8, seeds=(0, 1, 2), distinct_draws=200
    ),
    "smoke": dict(
        num_train=16, num_test=4, first_stage_steps=1, steps=2, batch_size=4, seeds=(0, 1, 2), distinct_draws=5
    ),  # runs, no more
}
PREFILL_BATCH = 16


def content_setting(settings: dict) -> dict:
    return {key: settings[key] for key in ("num_train", "num_test", "first_stage_steps", "steps", "batch_size")} | {
        "seeds": list(settings["seeds"]),
        "learning_rate": LEARNING_RATE,
    }


# --------------------------------------------------------------------------------------------------------------------
# Data: training clips per seed and one test set, stored as uint8 frame arrays (memory-mapped by the workers)
# --------------------------------------------------------------------------------------------------------------------


def _store(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "frames.npy", np.stack([row["frames"] for row in rows]))
    keys = ("question_type", "question", "answer", "clip_hash", "bag_hash")
    (folder / "rows.json").write_text(json.dumps([{key: row[key] for key in keys} for row in rows]))


class StoredClips:
    """Rows of a stored split, with the frames read from the memory-mapped array on access."""

    def __init__(self, folder: Path):
        from storm_hf.synthetic import make_messages

        self.make_messages = make_messages
        self.frames = np.load(folder / "frames.npy", mmap_mode="r")
        self.rows = json.loads((folder / "rows.json").read_text())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        frames = np.array(self.frames[index])
        return dict(row, frames=frames, messages=self.make_messages(frames, row["question"], row["answer"]))


def rendering_fingerprint() -> str:
    """sha256 of the clip hashes of one scene per question type drawn from a fixed seed: changes with any change of
    the rendering (shapes, sizes, colours, noise, timing)."""
    from storm_hf.synthetic import QUESTION_TYPES, sample_scene

    rng = np.random.default_rng([30_000, 3])
    scenes = [sample_scene(question_type, rng) for question_type in QUESTION_TYPES]
    return hashlib.sha256("".join(scene.clip_hash(0) for scene in scenes).encode()).hexdigest()


def data_folder(root: Path, settings: dict, fingerprint: str) -> Path:
    """Where the clips and finished runs of `settings` are kept: `root/{size}-{key}`, the key a hash of the content
    settings and the rendering (its `rendering_fingerprint`), so that a rerun reuses clips and runs only if both are
    unchanged."""
    content = json.dumps(content_setting(settings), sort_keys=True) + fingerprint
    return root / f"{settings['size']}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"


def prepare_data(data: Path, settings: dict, fingerprint: str) -> dict:
    """Renders the training clips of every seed and the test set (unseen by all of them) into `data` (a
    `data_folder`), or reads them back from an earlier run; returns the data report."""
    from storm_hf.synthetic import QUESTION_TYPES, ClipHashes, distinct_clip_counts, draw_clips, unseen_clips

    report_file = data / "data_report.json"
    if report_file.is_file():
        return json.loads(report_file.read_text())
    seen = ClipHashes()
    for seed in settings["seeds"]:
        rows = list(draw_clips(settings["num_train"], np.random.default_rng([seed, 0])))
        _store(data / f"train_seed{seed}", rows)
        seen.clip_hashes |= ClipHashes.of(rows).clip_hashes
        seen.bag_hashes |= ClipHashes.of(rows).bag_hashes
    test, rejected = unseen_clips(settings["num_test"] * len(QUESTION_TYPES), np.random.default_rng([10_000, 1]), seen)
    _store(data / "test", test)
    report = dict(
        settings=content_setting(settings),
        rendering_fingerprint=fingerprint,
        test_candidates_rejected=rejected,
        distinct_in_draws=distinct_clip_counts(settings["distinct_draws"], np.random.default_rng([20_000, 2])),
    )
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    return report


def check_overlap(data: Path, settings: dict) -> dict:
    """Per question type, the test rows whose clip or bag hash is among any seed's training rows (read back from
    disk: the check of what the arms are actually evaluated on)."""
    from storm_hf.synthetic import ClipHashes

    seen = ClipHashes()
    for seed in settings["seeds"]:
        rows = json.loads((data / f"train_seed{seed}" / "rows.json").read_text())
        seen.clip_hashes |= ClipHashes.of(rows).clip_hashes
        seen.bag_hashes |= ClipHashes.of(rows).bag_hashes
    overlap = seen.overlap(json.loads((data / "test" / "rows.json").read_text()))
    if any(counts["clips"] or counts["scenes"] for counts in overlap.values()):
        raise RuntimeError(f"Test clips overlap the training clips: {overlap}")
    return overlap


# --------------------------------------------------------------------------------------------------------------------
# What memory alone scores: the answer of the nearest training clip, no learning
# --------------------------------------------------------------------------------------------------------------------

NEAREST_NEIGHBOUR_LABEL = "1-nearest training clip (foreground pixels, no learning)"


def foreground(frames: np.ndarray) -> np.ndarray:
    """`(num_frames, H, W, 3)` uint8 -> the frames minus their per-pixel median over time, flattened, int16 (exact:
    a median of uint8 values is a whole or half level, so it is taken rounded down)."""
    frames = frames.astype(np.int16)
    return (frames - np.floor(np.median(frames, axis=0, keepdims=True)).astype(np.int16)).reshape(-1)


def nearest_neighbour_answers(train_features: np.ndarray, train_answers: list[str], test_features: np.ndarray):
    """The answer of each test row's nearest training row (squared Euclidean distance, ties to the first)."""
    distances = (
        (test_features**2).sum(1)[:, None] - 2 * test_features @ train_features.T + (train_features**2).sum(1)[None]
    )
    return [train_answers[index] for index in distances.argmin(1)]


def foreground_features(clips: StoredClips, question_type: str) -> tuple[np.ndarray, list[str]]:
    """The `foreground` of every clip of `question_type` in `clips`, `(num_clips, num_values)` float32, and their
    answers."""
    indices = [index for index, row in enumerate(clips.rows) if row["question_type"] == question_type]
    features = np.stack([foreground(clips.frames[index]) for index in indices]).astype(np.float32)
    return features, [clips.rows[index]["answer"] for index in indices]


def nearest_neighbour_accuracy(data: Path, settings: dict) -> dict[str, dict[str, float]]:
    """Per seed (a string) and question type, and "all" (their mean): the accuracy of answering each test clip with
    the answer of the training clip of its question type nearest to it in `foreground` pixels, among that seed's
    training clips. Computed once per data folder (a `data_folder`) and kept there."""
    from storm_hf.synthetic import QUESTION_TYPES

    kept = data / "nearest_neighbour.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    test = StoredClips(data / "test")
    test_features = {question_type: foreground_features(test, question_type) for question_type in QUESTION_TYPES}
    accuracy = {}
    for seed in settings["seeds"]:
        train, of_seed = StoredClips(data / f"train_seed{seed}"), {}
        for question_type, (features, answers) in test_features.items():
            predicted = nearest_neighbour_answers(*foreground_features(train, question_type), features)
            of_seed[question_type] = float(np.mean([guess == answer for guess, answer in zip(predicted, answers)]))
        accuracy[str(seed)] = of_seed | {"all": statistics.mean(of_seed.values())}
        print(f"1-nearest training clip, seed {seed}: {json.dumps(accuracy[str(seed)])}", flush=True)
    kept.write_text(json.dumps(accuracy, indent=2) + "\n")
    return accuracy


# --------------------------------------------------------------------------------------------------------------------
# One (arm, seed) run, in its own process
# --------------------------------------------------------------------------------------------------------------------


def prefill_seconds(model, processor, rows, **processor_kwargs) -> tuple[float, int]:
    """Median time of 5 forward passes over the prompts of `rows` (vision tower, projector, LLM prefill), after a
    warm-up, and the number of visual tokens per clip."""
    import torch

    from storm_hf.synthetic.evaluate import prompt_inputs

    inputs = prompt_inputs(processor, rows, **processor_kwargs)
    times = []
    with torch.inference_mode():
        for _ in range(6):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    visual_tokens = int((inputs["input_ids"][0] == processor.video_token_id).sum())
    return statistics.median(times[1:]), visual_tokens


def run_one(arm_name: str, seed: int, settings: dict, data: str, demo_checkpoint: str | None = None) -> dict:
    """Trains and evaluates one arm with one seed; saves the model as the demo checkpoint if `demo_checkpoint`."""
    import torch

    torch.set_num_threads(1)
    from storm_hf import StormForConditionalGeneration
    from storm_hf.synthetic import (
        build_task_processor,
        build_task_tokenizer,
        evaluate_temporal_task,
        temporal_task_config,
        train_temporal_task_model,
    )

    arm, data = ARMS[arm_name], Path(data)
    train, test = StoredClips(data / f"train_seed{seed}"), StoredClips(data / "test")
    tokenizer = build_task_tokenizer()
    processor = build_task_processor(tokenizer, num_frames=arm.num_frames, temporal_pool_size=arm.temporal_pool_size)
    torch.manual_seed(seed)
    config = temporal_task_config(
        tokenizer,
        mamba_num_layers=arm.mamba_num_layers,
        mamba_bidirectional=arm.mamba_bidirectional,
        temporal_pool_size=arm.temporal_pool_size,
    )
    model = StormForConditionalGeneration(config)
    start = time.perf_counter()
    output = train_temporal_task_model(
        model,
        processor,
        train,
        output_dir=data / "trainer" / f"{arm_name}_seed{seed}",
        max_steps=settings["steps"],
        first_stage_steps=settings["first_stage_steps"],
        batch_size=settings["batch_size"],
        learning_rate=LEARNING_RATE,
        language_model_learning_rate=None,
        seed=seed,
        use_cpu=True,
    )
    result = dict(
        arm=arm_name,
        seed=seed,
        parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=round(time.perf_counter() - start, 1),
        train_loss_run_average=round(output.training_loss, 4),
        evaluations={},
    )
    prefill_rows = [test[index] for index in range(PREFILL_BATCH)]
    for stride in (1, *arm.test_time_strides):
        kwargs = {"temporal_sampling_stride": stride} if stride > 1 else {}
        accuracy = evaluate_temporal_task(model, processor, test, **kwargs)
        seconds, tokens = prefill_seconds(model, processor, prefill_rows, **kwargs)
        result["evaluations"][str(stride)] = dict(
            accuracy={key: round(value, 4) for key, value in accuracy.items()},
            visual_tokens=tokens,
            prefill_ms=round(1000 * seconds, 1),
        )
    if demo_checkpoint:
        from storm_hf.synthetic import ClipHashes
        from storm_hf.synthetic.demo import save_demo_checkpoint

        save_demo_checkpoint(model, processor, demo_checkpoint, ClipHashes.of(train.rows))
        record = dict(result, test_overlap_checked=check_overlap(data, settings), settings=content_setting(settings))
        option = "--causal-demo-checkpoint" if arm_name.startswith("causal") else "--demo-checkpoint"
        record["command"] = f"python benchmarks/bench_temporal_task.py --size {settings['size']} {option} DIR"
        (Path(demo_checkpoint) / "task_results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{arm_name} seed {seed}: {json.dumps(result['evaluations'])}", flush=True)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------

TITLE = "# Synthetic long videos: a small replica of the paper's Table 2"


def seed_statistics(values: list[float]) -> dict:
    """Mean and standard deviation (0 for one seed) of per-seed `values`, and the values."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return dict(mean=statistics.mean(values), std=spread, per_seed=values)


def rows_of(results: list[dict]) -> list[dict]:
    """One table row per (arm, test-time stride): mean, std and per-seed values of every accuracy."""
    from storm_hf.synthetic import QUESTION_TYPES

    table = []
    for arm_name, arm in ARMS.items():
        runs = sorted((r for r in results if r["arm"] == arm_name), key=lambda r: r["seed"])
        if not runs:
            continue
        for stride in (1, *arm.test_time_strides):
            evaluations = [run["evaluations"][str(stride)] for run in runs]
            table.append(
                dict(
                    arm=arm_name,
                    test_time_stride=stride,
                    label=arm.label + (f" + T.Sampling s={stride} (test time)" if stride > 1 else ""),
                    visual_tokens=evaluations[0]["visual_tokens"],
                    accuracy={
                        key: seed_statistics([evaluation["accuracy"][key] for evaluation in evaluations])
                        for key in (*QUESTION_TYPES, "all")
                    },
                    prefill_ms=statistics.median(evaluation["prefill_ms"] for evaluation in evaluations),
                    seeds=[run["seed"] for run in runs],
                )
            )
    return table


def nearest_neighbour_row(accuracy: dict[str, dict[str, float]]) -> dict:
    """The table row of `nearest_neighbour_accuracy`: mean, std and per-seed values of every accuracy."""
    from storm_hf.synthetic import QUESTION_TYPES

    seeds = sorted(accuracy, key=int)
    return dict(
        label=NEAREST_NEIGHBOUR_LABEL,
        accuracy={key: seed_statistics([accuracy[seed][key] for seed in seeds]) for key in (*QUESTION_TYPES, "all")},
        seeds=[int(seed) for seed in seeds],
    )


def markdown_table(table: list[dict], nearest_neighbour: dict) -> str:
    """The headline table: the two references (a bag of frames, the nearest training clip), then every arm."""
    from storm_hf.synthetic import BAG_OF_FRAMES_CHANCE, QUESTION_TYPES

    chances = [BAG_OF_FRAMES_CHANCE[question_type] for question_type in QUESTION_TYPES]

    def cells(row):
        return " | ".join(
            f"{100 * row['accuracy'][key]['mean']:.1f} ± {100 * row['accuracy'][key]['std']:.1f}"
            for key in (*QUESTION_TYPES, "all")
        )

    lines = [
        f"| arm | visual tokens | {' | '.join(QUESTION_TYPES)} | all | prefill (ms, batch of {PREFILL_BATCH}) |",
        "|---|---|" + "---|" * (len(QUESTION_TYPES) + 2),
        f"| best a bag of frames can do | | {' | '.join(f'{100 * chance:.1f}' for chance in chances)}"
        f" | {100 * statistics.mean(chances):.1f} | |",
        f"| {nearest_neighbour['label']} | | {cells(nearest_neighbour)} | |",
    ]
    lines += [f"| {row['label']} | {row['visual_tokens']} | {cells(row)} | {row['prefill_ms']:.1f} |" for row in table]
    return "\n".join(lines)


def report_body(settings: dict, data_report: dict, overlap: dict, reused_runs: int, plot_name: str) -> str:
    """The results file below the headline table: the method, the unseen-clips check and the plot."""
    from storm_hf.synthetic import QUESTION_TYPES

    lines = [
        f"Configuration **{settings['size']}**: {settings['num_train']} training clips per seed, "
        f"{settings['first_stage_steps']} steps of {settings['batch_size']} `direction` clips (first stage), then "
        f"{settings['steps']} steps of {settings['batch_size']} clips of every question type, seeds "
        f"{list(settings['seeds'])}, {settings['num_test']} test clips per question type (one test set for every arm "
        "and seed). 32-frame 32x32 px clips, one visual token per frame before compression. Accuracy: greedy exact "
        "match, mean ± standard deviation over the seeds (per-seed values in the .json). Prefill: median of 5 "
        f"forward passes over a batch of {PREFILL_BATCH} prompts on 1 CPU thread, median over the seeds (a shared "
        f"machine: indicative only). {settings['jobs']} runs at a time, one process and 1 torch thread each; "
        f"{reused_runs} runs reused from an earlier invocation with the same settings and rendering.",
        "",
        f'The row "{NEAREST_NEIGHBOUR_LABEL}" learns nothing: each test clip takes the answer of the training clip '
        "of its question type nearest to it in Euclidean distance over its foreground (the frames minus their "
        "per-pixel median over time, 32 x 32 x 32 x 3 values), among one seed's training clips; mean ± standard "
        "deviation over the seeds' training sets. Where it scores as high as an arm, template matching against the "
        "training clips answers the test clips as well as that model does.",
        "",
        "## Test clips are unseen (checked by content hash)",
        "",
        "| question type | test clips | equal to a training clip (up to noise) | reordering a training scene "
        "| candidates rejected | distinct clips / scenes in a separate draw |",
        "|---|---|---|---|---|---|",
    ]
    for question_type in QUESTION_TYPES:
        counts, distinct = (overlap[question_type], data_report["distinct_in_draws"][question_type])
        lines.append(
            f"| {question_type} | {counts['rows']} | {counts['clips']} | {counts['scenes']} | "
            f"{data_report['test_candidates_rejected'][question_type]} | {distinct['distinct_clips']} / "
            f"{distinct['distinct_scenes']} of {distinct['draws']} |"
        )
    lines += ["", f"![accuracy vs visual tokens]({plot_name})"]
    return "\n".join(lines)


def plot(table: list[dict], nearest_neighbour: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from storm_hf.synthetic import BAG_OF_FRAMES_CHANCE

    figure, axes = plt.subplots(figsize=(7, 4.5))
    families = {}
    for row in table:
        families.setdefault(row["arm"], []).append(row)
    for family, rows in families.items():
        rows = sorted(rows, key=lambda row: row["visual_tokens"])
        axes.errorbar(
            [row["visual_tokens"] for row in rows],
            [100 * row["accuracy"]["all"]["mean"] for row in rows],
            yerr=[100 * row["accuracy"]["all"]["std"] for row in rows],
            marker="o",
            capsize=3,
            label=ARMS[family].label + (" (s = 1, 2, 4)" if len(rows) > 1 else ""),
        )
    axes.axhline(
        100 * nearest_neighbour["accuracy"]["all"]["mean"], color="black", linestyle="--", label=NEAREST_NEIGHBOUR_LABEL
    )
    axes.axhline(
        100 * statistics.mean(BAG_OF_FRAMES_CHANCE.values()), color="grey", linestyle=":", label="bag of frames"
    )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("visual tokens per clip (LLM input)")
    axes.set_ylabel("accuracy, all question types (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one process, one torch thread each)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/storm_temporal_task"), help="clips and finished runs")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "temporal_task.md", help="the results file (.json and .png beside it)"
    )
    parser.add_argument(
        "--demo-checkpoint",
        type=Path,
        help="also save the storm_tpool model of the first seed here, with its training hashes (the demo checkpoint)",
    )
    parser.add_argument(
        "--causal-demo-checkpoint",
        type=Path,
        help="also save the causal_storm_tpool model of the first seed here (the streaming demo checkpoint)",
    )
    args = parser.parse_args(argv)
    if args.out.suffix != ".md":
        parser.error(f"--out {args.out}: give the path of a markdown file (ending in .md); .json and .png go beside it")
    import torch

    torch.set_num_threads(1)  # as in every run's process, so that the provenance records the threads the runs use
    run = start_run(argv)  # the code that runs, not the code at the end of the run
    settings = dict(SIZES[args.size], size=args.size, jobs=args.jobs)
    fingerprint = rendering_fingerprint()
    data = data_folder(args.data, settings, fingerprint)
    data.mkdir(parents=True, exist_ok=True)
    data_report = prepare_data(data, settings, fingerprint)
    overlap = check_overlap(data, settings)
    nearest_neighbour = nearest_neighbour_row(nearest_neighbour_accuracy(data, settings))

    jobs = [(arm, seed) for arm in args.arms for seed in settings["seeds"]]
    done = lambda arm, seed: data / "runs" / f"{arm}_seed{seed}.json"  # noqa: E731
    (data / "runs").mkdir(exist_ok=True)
    first_seed = settings["seeds"][0]
    demo_checkpoints = {
        ("storm_tpool", first_seed): args.demo_checkpoint,
        ("causal_storm_tpool", first_seed): args.causal_demo_checkpoint,
    }
    # the runs that save a demo checkpoint first (so that it exists early), then the others in order
    todo = sorted((job for job in jobs if not done(*job).is_file()), key=lambda job: not demo_checkpoints.get(job))
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            job: pool.submit(
                run_one, *job, settings, str(data), demo_checkpoints.get(job) and str(demo_checkpoints[job])
            )
            for job in todo
        }
        for (arm, seed), future in futures.items():
            done(arm, seed).write_text(json.dumps(future.result(), indent=2) + "\n")
    results = [json.loads(done(*job).read_text()) for job in jobs]

    table = rows_of(results)
    headline = markdown_table(table, nearest_neighbour)
    write_results(
        args.out.stem,
        TITLE,
        report_body(settings, data_report, overlap, len(jobs) - len(todo), args.out.with_suffix(".png").name),
        dict(
            settings=settings,
            data=data_report,
            test_overlap_checked=overlap,
            reused_runs=len(jobs) - len(todo),
            nearest_neighbour=nearest_neighbour,
            table=table,
            runs=results,
        ),
        run,
        headline=headline,
        results_dir=args.out.parent,
    )
    plot(table, nearest_neighbour, args.out.with_suffix(".png"), f"synthetic temporal task, {args.size} configuration")
    print(headline)


if __name__ == "__main__":
    main()
