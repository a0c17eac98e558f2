"""Hub round trip without a Hub: uploads are captured at huggingface_hub's commit API, then loaded in fresh
processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from checkpoints import REPO_ID, seed_hub_cache, tiny_model_and_processor
from media import make_frames, write_video

from storm_hf.hub import push_folder, push_to_hub, save_checkpoint


GENERATE = """
messages = [
    {{"role": "user", "content": [{{"type": "video", "path": {video!r}}}, {{"type": "text", "text": "What moves?"}}]}}
]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
)
generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
"""


def expected_generation(model, processor, video: Path) -> list[int]:
    scope = {"model": model, "processor": processor}
    exec(GENERATE.format(video=str(video)), scope)
    return scope["generated"]


def run_fresh(script: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert result.returncode == 0 and "FRESH-OK" in result.stdout, result.stderr[-4000:]
    return result.stdout


def test_push_yields_a_self_contained_repo_that_generates_without_storm_hf(hub, tmp_path):
    model, processor = tiny_model_and_processor()
    video = write_video(tmp_path / "clip.mp4", make_frames(12))
    push_to_hub(
        model,
        processor,
        REPO_ID,
        base_models=["google/siglip-so400m-patch14-384", "Qwen/Qwen2-VL-7B-Instruct", "./local/folder"],
        max_shard_size="200KB",
    )
    assert len(hub.commits) == 1  # one atomic commit
    repo = hub.files(REPO_ID)

    config = json.loads((repo / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModelForImageTextToText"}
    for code in (
        "configuration_storm.py",
        "modeling_storm.py",
        "processing_storm.py",
        "video_processing_storm.py",
        "token_budget.py",
    ):
        assert (repo / code).is_file(), code
    assert json.loads((repo / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]
    assert (repo / "chat_template.jinja").is_file() and (repo / "model.safetensors.index.json").is_file()

    card = (repo / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "video-text-to-text" and metadata["library_name"] == "transformers"
    assert metadata["base_model"] == ["google/siglip-so400m-patch14-384", "Qwen/Qwen2-VL-7B-Instruct"]
    # token budget: 2x2 tokens per frame, temporal pooling 2: 32 frames -> 128 tokens, 64 with pooling
    assert "| 32 | 128 | 64 (50.0%) | 32 (25.0%) | 16 (12.5%) |" in card
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in card

    expected = expected_generation(model, processor, video)
    run_fresh(
        f"""
        import sys
        sys.modules["storm_hf"] = None  # storm_hf is not importable here: only the repo's own code can run
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(repo)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(repo)!r}, trust_remote_code=True)
        assert "storm_hf" not in type(model).__module__ and "storm_hf" not in type(processor).__module__
        {textwrap.indent(GENERATE.format(video=str(video)), "        ").strip()}
        assert generated == {expected!r}, generated
        print("FRESH-OK")
        """,
        {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )


def test_transformers_push_to_hub_on_model_and_processor_ships_the_code(hub):
    model, processor = tiny_model_and_processor()
    model.push_to_hub(REPO_ID)
    processor.push_to_hub(REPO_ID)
    repo = hub.files(REPO_ID)
    assert json.loads((repo / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
    assert json.loads((repo / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]
    assert {
        "modeling_storm.py",
        "selective_scan.py",
        "processing_storm.py",
        "video_decoding.py",
        "chat_template.jinja",
    } <= {p.name for p in repo.iterdir()}


@pytest.mark.parametrize("with_storm_hf", [True, False])
def test_from_pretrained_by_repo_id_through_an_offline_cache(hub, tmp_path, with_storm_hf):
    model, processor = tiny_model_and_processor()
    video = write_video(tmp_path / "clip.mp4", make_frames(9, seed=3))
    push_to_hub(model, processor, REPO_ID)
    seed_hub_cache(tmp_path / "cache", REPO_ID, hub.files(REPO_ID))
    expected = expected_generation(model, processor, video)
    header = "import storm_hf" if with_storm_hf else 'import sys; sys.modules["storm_hf"] = None'
    remote = "" if with_storm_hf else ", trust_remote_code=True"
    run_fresh(
        f"""
        {header}
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({REPO_ID!r}{remote})
        processor = AutoProcessor.from_pretrained({REPO_ID!r}{remote})
        assert ("storm_hf" in type(model).__module__) == {with_storm_hf}
        {textwrap.indent(GENERATE.format(video=str(video)), "        ").strip()}
        assert generated == {expected!r}, generated
        print("FRESH-OK")
        """,
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )


def test_push_folder_refuses_an_incomplete_checkpoint(hub, tmp_path):
    model, processor = tiny_model_and_processor()
    save_checkpoint(model, processor, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "README.md").unlink()
    push_folder(tmp_path / "ckpt", REPO_ID)
    assert "README.md" in hub.commits[-1][1]  # a card is written for a folder without one
    (tmp_path / "ckpt" / "processing_storm.py").unlink()
    with pytest.raises(ValueError, match="processing_storm.py"):
        push_folder(tmp_path / "ckpt", REPO_ID)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Qwen/Qwen2-VL-7B-Instruct", True),
        ("gpt2", True),
        ("/no/such/ckpt", False),
        ("./ckpt", False),
        ("../ckpt", False),
        ("~/ckpt", False),
        ("runs/storm/ckpt", False),
        ("org/na me", False),
        ("{existing}", False),  # an existing folder named like a repo id is a folder
    ],
)
def test_is_hub_id(tmp_path, monkeypatch, name, expected):
    from storm_hf.hub import is_hub_id

    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(name.format(existing="org/model")) is expected
