"""The lmms-eval plugin (`--model storm`) through lmms-eval's own CLI, in lmms-eval's own virtual environment.

lmms-eval lives in `.venv-lmms` (`bash scripts/install_lmms_eval.sh`; CI creates it), apart from the main environment.
The shipped demo checkpoint answers freshly rendered clips of the synthetic task through `python -m lmms_eval`, batched
4 at a time; its answers must equal this environment's own `generate`, one clip at a time, and the accuracy lmms-eval
reports must be the one those answers give. (No accuracy threshold here: `tests/test_task_checkpoints.py` checks the
checkpoint's accuracy on unseen clips.)
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
LMMS_PYTHON = Path(os.environ.get("STORM_LMMS_EVAL_PYTHON", ROOT / ".venv-lmms" / "bin" / "python"))
TASK_DIR = ROOT / "tests" / "lmms_eval_task"
STOP = "e"  # storm_clips_until's `until`: cuts "yes" to "y", "left" to "l"

pytestmark = pytest.mark.skipif(
    not LMMS_PYTHON.exists(),
    reason=f"lmms-eval's environment {LMMS_PYTHON} is missing: bash scripts/install_lmms_eval.sh",
)


def run_lmms(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([str(LMMS_PYTHON), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def reference_answers(checkpoint, rows, processor_settings) -> list[str]:
    """Greedy answers of `checkpoint`, one clip at a time, with transformers' `generate` in this process."""
    from storm_hf import StormForConditionalGeneration, StormProcessor

    model = StormForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = StormProcessor.from_pretrained(checkpoint)
    answers = []
    for row in rows:
        conversation = [
            {
                "role": "user",
                "content": [{"type": "video", "path": row["video"]}, {"type": "text", "text": row["question"]}],
            }
        ]
        inputs = processor.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs=processor_settings,
        )
        inputs.pop("video_metadata", None)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answers.append(processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def same_answer(response: str, target: str) -> bool:
    """storm_clips' metric (tests/lmms_eval_task/utils.py), written again as the reference."""
    return response.strip().strip(".").lower() == target.lower()


def test_entry_point_module_is_light():
    script = (
        "import sys; from importlib.metadata import entry_points\n"
        "(storm,) = [ep for ep in entry_points(group='lmms_eval.models') if ep.name == 'storm']\n"
        "manifest = storm.load()\n"
        "heavy = sorted({'torch', 'transformers', 'storm_hf'} & set(sys.modules))\n"
        "print(manifest.model_id, manifest.chat_class_path, heavy)"
    )
    result = run_lmms("-c", script, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["storm", "storm_hf.integrations.lmms_eval.Storm", "[]"]


def test_lmms_eval_cli_scores_the_demo_checkpoint_batched(tmp_path, demo_checkpoint):
    from storm_hf import StormProcessor
    from storm_hf.synthetic import generate_temporal_task

    # Passed through --model_args: the checkpoint's own frame count, and the stride it was trained with.
    processor_settings = {
        "num_frames": StormProcessor.from_pretrained(demo_checkpoint).video_processor.num_frames,
        "temporal_sampling_stride": 1,
    }
    rows = list(generate_temporal_task(tmp_path / "clips", num_train=0, num_test=12, seed=7)["test"])
    with open(tmp_path / "clips.jsonl", "w") as clips:  # storm_clips.yaml reads clips.jsonl from the working directory
        for row in rows:
            clips.write(json.dumps({key: row[key] for key in ("video", "question", "answer", "question_type")}) + "\n")

    settings = ",".join(f"{key}={value}" for key, value in processor_settings.items())
    arguments = {
        "--model": "storm",
        "--model_args": f"pretrained={demo_checkpoint},{settings}",
        "--tasks": "storm_clips,storm_clips_until",
        "--include_path": str(TASK_DIR),
        "--batch_size": "4",
        "--output_path": str(tmp_path / "out"),
    }
    result = run_lmms(
        "-m", "lmms_eval", *(item for pair in arguments.items() for item in pair), "--log_samples", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    results_files = list((tmp_path / "out").glob("*/*_results.json"))
    assert len(results_files) == 1, f"lmms-eval wrote no results (it exits 0 on failures):\n{output[-3000:]}"
    results = json.loads(results_files[0].read_text())["results"]

    expected = reference_answers(demo_checkpoint, rows, processor_settings)
    answers = [row["answer"] for row in rows]
    for task, cut in (("storm_clips", lambda text: text), ("storm_clips_until", lambda text: text.split(STOP, 1)[0])):
        (samples_file,) = (tmp_path / "out").glob(f"*/*_samples_{task}.jsonl")
        samples = sorted(
            (json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
        )
        assert [sample["filtered_resps"] for sample in samples] == [cut(answer) for answer in expected], task
        accuracy = sum(same_answer(cut(answer), target) for answer, target in zip(expected, answers)) / len(rows)
        assert results[task]["accuracy,none"] == pytest.approx(accuracy), task
        assert f"|{task}" in output  # the summary table lmms-eval prints
    assert any(STOP in answer for answer in expected)  # the stop sequence did cut something
