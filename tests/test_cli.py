"""The storm-hf command: help, argument errors, info numbers, generate against the Python API, compose/convert/push."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import (
    REPO_ID,
    TEXT,
    VISION,
    qwen_source,
    siglip_source,
    tiny_model_and_processor,
    write_vila_checkpoint,
)
from media import make_frames, write_video
from modeling_utils import tiny_config
from transformers import AutoProcessor

import storm_hf
from storm_hf import StormForConditionalGeneration
from storm_hf.commands import main
from storm_hf.hub import save_checkpoint
from storm_hf.synthetic.demo import BUNDLED_CHECKPOINT


SUBCOMMANDS = ["generate", "compose", "convert", "push", "info", "demo"]


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        status = main(list(map(str, argv)))
    except SystemExit as exit_:  # argparse: --help and argument errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("command", [[], *[[name] for name in SUBCOMMANDS]])
def test_help_everywhere(capsys, command):
    status, out, _ = run(capsys, *command, "--help")
    assert status == 0 and out.startswith("usage: storm-hf")


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "storm-hf"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(name in result.stdout for name in SUBCOMMANDS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model, processor = tiny_model_and_processor()
    save_checkpoint(model, processor, folder)
    write_video(folder / "clip.mp4", make_frames(20))
    return folder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--video", "{video}", "--prompt", "x"], "--model"),
        (["generate", "--model", "{model}", "--video", "missing.mp4", "--prompt", "x"], "no such file: missing.mp4"),
        (
            [
                "generate",
                "--model",
                "{model}",
                "--video",
                "{video}",
                "--prompt",
                "x",
                "--num-frames",
                "4",
                "--fps",
                "1",
            ],
            "not allowed with",
        ),
        (
            ["generate", "--model", "{model}", "--video", "{video}", "--prompt", "x", "--num-frames", "-3"],
            "positive integer",
        ),
        (["generate", "--model", "{model}", "--video", "{video}", "--prompt", "x", "--fps", "nan"], "positive number"),
        (["info", "--frames", "0"], "positive integer"),
        (["info", "--dtype", "int8"], "invalid choice"),
        (["compose", "--vision", "a", "--language", "b"], "--output"),
        (["convert", "missing-folder", "--output", "out"], "no such folder"),
        (["convert", "{model}", "--output", "out", "--max-shard-size", "lots"], "5GB"),
        (["push", "{model}"], "repo_id"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(capsys, checkpoint, argv, message):
    argv = [arg.format(model=checkpoint, video=checkpoint / "clip.mp4") for arg in argv]
    status, _, err = run(capsys, *argv)
    assert status == 2 and message in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["generate", "--model", "/no/such/ckpt", "--video", "{video}", "--prompt", "x"],
            "no such checkpoint folder: /no/such/ckpt",
        ),
        (
            ["generate", "--model", "{model}", "--video", "{video}", "--prompt", "x", "--num-frames", "50"],
            "only 20 frames",
        ),
        (
            ["generate", "--model", "{model}", "--video", "{model}/config.json", "--prompt", "x"],
            "could not be opened as a video",
        ),
        (["info", "--model", "./nowhere"], "no such checkpoint folder"),
        (["push", "{model}/..", "org/name"], "not a self-contained STORM checkpoint"),
    ],
)
def test_runtime_failures_exit_1_with_one_line(capsys, checkpoint, argv, message):
    argv = [arg.format(model=checkpoint, video=checkpoint / "clip.mp4") for arg in argv]
    status, _, err = run(capsys, *argv)
    last = err.strip().splitlines()[-1]
    assert status == 1 and last.startswith(f"storm-hf {argv[0]}: error:") and message in last, err


def test_info_for_the_papers_7b_model(capsys):
    status, out, _ = run(capsys, "info", "--frames", "128", "256")
    assert status == 0
    rows = {tuple(re.split(r"\s{2,}", line.strip())[:3]) for line in out.splitlines()}
    # the paper: 256 tokens per frame; T.Pool 4 -> 64 per frame, so 128 frames fit the 8K budget
    assert (
        ("128", "none", "32,768") in rows
        and ("128", "T.Pool k=4", "8,192") in rows
        and ("256", "T.Pool k=4", "16,384") in rows
    )
    # KV cache of Qwen2-7B (28 layers, 4 KV heads of 128) for 8192 + 64 tokens in bf16: 2*28*4*128*8256*2 bytes
    kv = 2 * 28 * 4 * 128 * (8192 + 64) * 2 / 2**20
    assert f"{kv:.2f} MiB" in next(line for line in out.splitlines() if "8,192" in line)
    assert "7.62B" in out  # Qwen2-7B with its untied LM head


def test_info_reads_a_checkpoint_config_and_overrides(capsys, checkpoint):
    status, out, _ = run(capsys, "info", "--model", checkpoint, "--frames", "6", "--temporal-sampling-stride", "2")
    assert status == 0
    expected = storm_hf.num_visual_tokens(6, 56, 56, patch_size=14, temporal_pool_size=2, temporal_sampling_stride=2)
    assert re.search(rf"\b6\s+T\.Pool k=2 \+ T\.Sampling s=2\s+{expected}\b", out), out


def test_generate_streams_the_models_greedy_answer(capsys, checkpoint):
    status, out, err = run(
        capsys,
        "generate",
        "--model",
        checkpoint,
        "--video",
        checkpoint / "clip.mp4",
        "--prompt",
        "What moves?",
        "--num-frames",
        "6",
        "--max-new-tokens",
        "4",
        "--temporal-sampling-stride",
        "2",
    )
    assert status == 0, err
    model = StormForConditionalGeneration.from_pretrained(checkpoint).eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "path": str(checkpoint / "clip.mp4")},
                {"type": "text", "text": "What moves?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        num_frames=6,
        temporal_sampling_stride=2,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.strip("\n") == answer.strip("\n")
    tokens = storm_hf.num_visual_tokens(6, 56, 56, patch_size=14, temporal_pool_size=2, temporal_sampling_stride=2)
    assert f"6 frames -> {tokens} visual tokens" in err
    assert "decoding frames" in err and "encoding frames" in err


def test_generate_progress_bars_count_every_frame(capsys, checkpoint):
    argv = ["--model", checkpoint, "--video", checkpoint / "clip.mp4", "--prompt", "x", "--max-new-tokens", "1"]
    status, _, err = run(capsys, "generate", *argv, "--num-frames", "5")
    assert status == 0, err
    assert re.search(r"decoding frames: 100%\S* 5/5", err) and re.search(r"encoding frames: 100%\S* 5/5", err), err
    status, _, err = run(capsys, "generate", *argv, "--num-frames", "5", "--no-progress")
    assert status == 0 and "decoding frames" not in err and "encoding frames" not in err, err


def test_compose_convert_and_push_commands(capsys, tmp_path, hub):
    siglip_source("siglip", tmp_path / "vision")
    qwen_source("qwen2_vl-legacy", tmp_path / "language")
    status, out, err = run(
        capsys,
        "compose",
        "--vision",
        tmp_path / "vision",
        "--language",
        tmp_path / "language",
        "--output",
        tmp_path / "composed",
        "--mamba-num-layers",
        "1",
        "--temporal-pool-size",
        "2",
        "--num-frames",
        "8",
        "--max-shard-size",
        "100KB",
    )
    assert status == 0, err
    assert "text tower" in out and "Qwen2-VL's own vision encoder" in out
    model = StormForConditionalGeneration.from_pretrained(tmp_path / "composed")
    assert model.config.mamba_num_layers == 1 and model.config.temporal_pool_size == 2

    config = tiny_config(
        vision_config={**VISION, "model_type": "siglip_vision_model"},
        text_config={**TEXT, "model_type": "qwen2"},
        mamba_state_size=4,
    )
    write_vila_checkpoint(tmp_path / "vila", config)
    status, out, err = run(
        capsys, "convert", tmp_path / "vila", "--output", tmp_path / "converted", "--temporal-sampling-stride", "2"
    )
    assert status == 0, err
    assert StormForConditionalGeneration.from_pretrained(tmp_path / "converted").config.temporal_sampling_stride == 2

    status, out, err = run(capsys, "push", tmp_path / "converted", REPO_ID)
    assert status == 0, err
    assert (hub.files(REPO_ID) / "modeling_storm.py").is_file() and (hub.files(REPO_ID) / "README.md").is_file()


# ---------------------------------------------------------------- demo


@pytest.fixture(scope="module")
def untrained_task_checkpoint(tmp_path_factory):
    """A randomly initialised model of the demo task's size (the wiring does not depend on its answers), saved with
    the content hashes of 8 "training" clips."""
    import numpy as np

    from storm_hf.synthetic import (
        ClipHashes,
        build_task_processor,
        build_task_tokenizer,
        draw_clips,
        temporal_task_config,
    )
    from storm_hf.synthetic.demo import save_demo_checkpoint

    folder = tmp_path_factory.mktemp("task")
    tokenizer = build_task_tokenizer()
    torch.manual_seed(0)
    model = StormForConditionalGeneration(temporal_task_config(tokenizer))
    seen = ClipHashes.of(draw_clips(8, np.random.default_rng(0)))
    save_demo_checkpoint(model, build_task_processor(tokenizer), folder, seen)
    return folder


def test_demo_shows_answer_tokens_times_and_accuracy(capsys, untrained_task_checkpoint):
    argv = ["--seed", "5", "--eval-clips", "4", "--question-type", "direction", "--prefill-frames", "4"]
    status, out, err = run(capsys, "demo", "--checkpoint", untrained_task_checkpoint, *argv)
    assert status == 0, err
    assert "Q: Which way does the shape move, left or right?" in out and "\nA: " in out
    assert "checked unseen: its content hash is not among the 8 training clips'" in out
    assert "what it learned: unknown" in out  # no task_results.json in this checkpoint
    config = StormForConditionalGeneration.config_class.from_pretrained(untrained_task_checkpoint)
    num_frames = AutoProcessor.from_pretrained(untrained_task_checkpoint).video_processor.num_frames
    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    common = dict(
        patch_size=patch,
        downsample_ratio=config.downsample_ratio,
        spatial_pool_size=config.spatial_pool_size,
    )
    pooled = storm_hf.num_visual_tokens(num_frames, size, size, temporal_pool_size=config.temporal_pool_size, **common)
    full = storm_hf.num_visual_tokens(num_frames, size, size, temporal_pool_size=1, **common)
    assert full == pooled * min(config.temporal_pool_size, num_frames)
    pool = config.temporal_pool_size
    assert re.search(
        rf"visual tokens: {pooled} with compression \(T\.Pool k={pool}\), {full} without; time \(median of 5\): "
        r"reading \+ processing the mp4 \d+ ms, the model \d+ ms",
        out,
    ), out
    # 4 frames at 448 px: 256 tokens each without pooling (2x2 pixel-shuffle of 32x32 patches), 4 x 256 / k with it
    assert re.search(rf"{1024 // pool} tokens \(T\.Pool k={pool}\) \d+ ms, 1024 tokens \(none\) \d+ ms", out), out
    assert re.search(r"accuracy on 4 clips checked unseen \(0 of them share a clip or scene hash", out), out
    assert "Loading weights" not in out and err.count("Loading weights: 100%") <= 1, err


def test_demo_asks_a_question_type_the_checkpoint_learned(capsys, untrained_task_checkpoint, tmp_path):
    """With a recorded evaluation (task_results.json), the demo names the learned types (binomial p < 1e-3 against
    the bag-of-frames bound) and draws its question from them; a type asked for that was not learned is flagged."""
    import json
    import shutil

    folder = tmp_path / "recorded"
    shutil.copytree(untrained_task_checkpoint, folder)
    # 200 clips per type: first 60% (p = 0.0028 at chance 1/2: not learned), count 45% (p = 2e-4 at 1/3: learned),
    # return 40% (below chance), direction 99%
    accuracy = {"first": 0.6, "count": 0.45, "return": 0.4, "direction": 0.99}
    recorded = {"evaluations": {"1": {"accuracy": accuracy}}, "settings": {"num_test": 200}}
    (folder / "task_results.json").write_text(json.dumps(recorded))
    for seed in range(6):
        status, out, err = run(
            capsys, "demo", "--checkpoint", folder, "--seed", str(seed), "--eval-clips", "0", "--prefill-frames", "0"
        )
        assert status == 0, err
        assert (
            "learned (its evaluation when saved, 200 unseen clips per type, p < 0.001 against a bag of frames): "
            "count 45% (bag of frames 33%), direction 99% (bag of frames 50%); not learned: first 60%" in out
        ), out
        question = next(line for line in out.splitlines() if line.startswith("Q: "))
        assert question in (
            "Q: How many times does the shape flash?",
            "Q: Which way does the shape move, left or right?",
        )
    status, out, err = run(
        capsys,
        "demo",
        "--checkpoint",
        folder,
        "--seed",
        "1",
        "--eval-clips",
        "0",
        "--prefill-frames",
        "0",
        "--question-type",
        "return",
    )
    assert status == 0 and "a type this checkpoint did not learn" in out, err


def test_demo_without_training_hashes_says_it_did_not_check(capsys, untrained_task_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "no_hashes"
    shutil.copytree(untrained_task_checkpoint, folder)
    (folder / "train_hashes.json").unlink()
    status, out, err = run(
        capsys, "demo", "--checkpoint", folder, "--seed", "1", "--eval-clips", "0", "--prefill-frames", "0"
    )
    assert status == 0, err
    assert "NOT checked against the training clips" in out and "checked unseen" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--question-type", "colours"], "Unknown question type 'colours'"),
        (["--eval-clips", "-1"], "--eval-clips"),
        (["--prefill-frames", "2"], "--prefill-frames 2 is below the temporal pooling size 4"),
    ],
)
def test_demo_rejects_bad_arguments(capsys, untrained_task_checkpoint, argv, message):
    status, _, err = run(capsys, "demo", "--checkpoint", untrained_task_checkpoint, *argv)
    assert status == 1 and message in err, err


def test_the_bundled_demo_checkpoint_loads_through_the_auto_classes_without_remote_code():
    from transformers import AutoModelForImageTextToText

    for path in BUNDLED_CHECKPOINT.glob("*.json"):
        assert "auto_map" not in path.read_text(), f"{path.name} maps to remote code the folder does not ship"
    assert not list(BUNDLED_CHECKPOINT.glob("*.py"))
    model = AutoModelForImageTextToText.from_pretrained(BUNDLED_CHECKPOINT)
    assert isinstance(model, StormForConditionalGeneration)
    assert type(AutoProcessor.from_pretrained(BUNDLED_CHECKPOINT)).__name__ == "StormProcessor"


def test_the_bundled_demo_evaluates_on_clips_it_checked_unseen():
    import io
    import json

    from storm_hf.synthetic.demo import load_train_hashes, run_demo

    size = sum(path.stat().st_size for path in BUNDLED_CHECKPOINT.rglob("*") if path.is_file())
    assert size <= 20 * 2**20, f"the bundled checkpoint is {size / 2**20:.1f} MiB"
    recorded = json.loads((BUNDLED_CHECKPOINT / "task_results.json").read_text())
    assert len(load_train_hashes(BUNDLED_CHECKPOINT).clip_hashes) == recorded["settings"]["num_train"]
    printed = io.StringIO()
    results = run_demo(seed=11, eval_clips=8, out=printed, prefill_frames=0)
    assert results["checked_unseen"], printed.getvalue()
    assert all(counts["clips"] == counts["scenes"] == 0 for counts in results["eval_overlap"].values())
    pool = StormForConditionalGeneration.config_class.from_pretrained(BUNDLED_CHECKPOINT).temporal_pool_size
    assert results["tokens_uncompressed"] == results["tokens"] * pool


def test_storm_hf_demo_console_script(tmp_path):
    script = Path(sys.executable).parent / "storm-hf"
    result = subprocess.run(
        [str(script), "demo", "--seed", "3", "--eval-clips", "0", "--prefill-frames", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Q: " in result.stdout and "visual tokens" in result.stdout


def test_generate_with_a_token_budget_matches_the_processor(capsys, checkpoint):
    from transformers import AutoProcessor

    video = checkpoint / "clip.mp4"
    argv = ["--model", checkpoint, "--video", video, "--prompt", "What moves?", "--max-new-tokens", "4"]
    status, out, err = run(capsys, "generate", *argv, "--max-visual-tokens", "8")
    assert status == 0, err
    processor = AutoProcessor.from_pretrained(checkpoint)
    chat = [
        {"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": "What moves?"}]}
    ]
    inputs = processor.apply_chat_template(
        chat,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"max_visual_tokens": 8},
    )
    model = StormForConditionalGeneration.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.strip("\n") == processor.decode(
        output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    ).strip("\n")
    # 8 tokens = 2 pooled frames of 2x2 tokens = 4 frames of the 2 s clip (2 per second: stride 1).
    assert inputs["video_num_frames"].tolist() == [[4]] and "4 frames -> 8 visual tokens" in err and "stride 1" in err
