"""Saving and pushing self-contained STORM checkpoints, with a model card.

A self-contained checkpoint loads with `trust_remote_code=True` where storm_hf is not installed: `config.json` has an
`auto_map` and the modeling code sits next to it; `processor_config.json` has an `auto_map` and the processing code;
the tokenizer, chat template and a model card (`README.md`) complete it.
"""

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .accounting import NO_COMPRESSION, compression_label, compression_of, video_tokens


PIPELINE_TAG = "video-text-to-text"
CARD_TAGS = ["storm", "video", "long-video", "mamba", "token-compression", "custom_code"]
TOKEN_BUDGET_FRAMES = (32, 64, 128, 256)


def token_budget_rows(
    config, frames=TOKEN_BUDGET_FRAMES, sampling_strides=(1, 2, 4)
) -> list[tuple[int, int, list[int]]]:
    """(frames, tokens without compression, [tokens with the config's pooling and each temporal-sampling stride])."""
    return [
        (
            num_frames,
            video_tokens(config, num_frames, **NO_COMPRESSION),
            [video_tokens(config, num_frames, temporal_sampling_stride=stride) for stride in sampling_strides],
        )
        for num_frames in frames
    ]


def token_budget_table(config, sampling_strides=(1, 2, 4)) -> str:
    """Markdown table: LLM tokens per video for common frame counts, uncompressed and with this model's compression."""
    header = ["frames", "no compression"] + [
        compression_label(**compression_of(config, stride)) for stride in sampling_strides
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for num_frames, full, compressed in token_budget_rows(config, sampling_strides=sampling_strides):
        cells = [str(num_frames), f"{full:,}"] + [f"{tokens:,} ({100 * tokens / full:.1f}%)" for tokens in compressed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether `name` can only mean a Hub repository: it is no existing path and it is a valid repo id (`name` or
    `org/name`; an absolute, relative or home path such as `/x`, `./x`, `~/x` or `a/b/c` is none)."""
    name = os.fspath(name)
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_card(
    config, repo_id: str | None = None, base_models=(), provenance: str | None = None, extra: str = ""
) -> ModelCard:
    """The model card of a STORM checkpoint: metadata (pipeline tag, base models, tags), architecture, the token
    budget table, usage with and without storm_hf, and where the weights came from."""
    base_models = [name for name in base_models if is_hub_id(name)]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        base_model=base_models or None,
        tags=list(CARD_TAGS),
    )
    text = config.text_config
    vision = config.vision_config
    name = repo_id or "STORM"
    repo = repo_id or "path/to/checkpoint"
    mamba = f"{config.mamba_num_layers} {'bidirectional' if config.mamba_bidirectional else 'causal'} Mamba layers"
    # Markdown paragraphs are single lines of the card; the literals below concatenate to one line each.
    summary = (
        'STORM ("Token-Efficient Long Video Understanding for Multimodal LLMs", Jiang et al., NVIDIA 2025) for Hugging '
        f"Face Transformers: a SigLIP vision tower ({vision.image_size} px, patch {vision.patch_size}, features of "
        f"layer {config.vision_feature_layer}) -> {config.downsample_ratio}x{config.downsample_ratio} pixel-shuffle -> "
        f"Linear -> {mamba} (the temporal projector: every visual token carries the context of the whole video) -> "
        f"token compression (trained: {compression_label(**compression_of(config, temporal_sampling_stride=1))}; "
        f"test-time temporal sampling) -> a {text.model_type} language model ({text.num_hidden_layers} layers, hidden "
        f"size {text.hidden_size})."
    )
    budget_note = (
        f"LLM tokens per video ({vision.image_size}x{vision.image_size} frames). Temporal sampling is a test-time "
        "choice (`temporal_sampling_stride` in the processor call); pooling sizes are fixed by training. Or set the "
        'budget and let the processor choose frames and stride: `processor_kwargs={"max_visual_tokens": 8192}`.'
    )
    messages_example = (
        'messages = [{"role": "user", "content": [{"type": "video", "path": "clip.mp4"}, '
        '{"type": "text", "text": "What happens?"}]}]'
    )
    install_note = (
        "Videos are decoded with PyAV (`pip install av`). With the `storm-hf` package installed (`import storm_hf`), "
        "`trust_remote_code` is not needed, and the command line does the same:"
    )
    serve_note = (
        'An OpenAI-compatible server (`pip install "transformers[serving]" torchvision av`; videos as `video_url` '
        'parts, per-request settings such as `extra_body={"chat_template_kwargs": {"max_visual_tokens": 8192}}`):'
    )
    body = f"""
# {name}

{summary}

## Token budget

{budget_note}

{token_budget_table(config)}

## Usage

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
{messages_example}
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    processor_kwargs={{"num_frames": 32}},
)
output = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

{install_note}

```bash
storm-hf generate --model {repo} --video clip.mp4 --prompt "What happens?" --num-frames 32
```

{serve_note}

```bash
transformers serve {repo} --trust-remote-code
```
{extra}"""
    if provenance:
        body += f"\n## Provenance\n\n```\n{provenance}\n```\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def save_checkpoint(
    model,
    processor,
    output_dir: str | os.PathLike,
    *,
    base_models=(),
    repo_id: str | None = None,
    max_shard_size: str | int = "5GB",
    provenance: str | None = None,
    card_extra: str = "",
) -> Path:
    """Save a self-contained checkpoint: sharded safetensors + config + code, processor + chat template, model card."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(output_dir)
    model_card(model.config, repo_id, base_models, provenance, card_extra).save(output_dir / "README.md")
    problems = self_contained_problems(output_dir)
    if problems:
        raise RuntimeError(f"The saved checkpoint in '{output_dir}' is not self-contained: {problems}")
    return output_dir


def self_contained_problems(folder: str | os.PathLike) -> list[str]:
    """What keeps a checkpoint folder from loading with `trust_remote_code=True` without storm_hf (empty: nothing)."""
    folder = Path(folder)
    problems = []
    for file_name, auto_classes in (
        ("config.json", ("AutoConfig", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")),
        ("processor_config.json", ("AutoProcessor",)),
    ):
        path = folder / file_name
        if not path.is_file():
            problems.append(f"no {file_name}")
            continue
        auto_map = json.loads(path.read_text()).get("auto_map", {})
        for auto_class in auto_classes:
            if auto_class not in auto_map:
                problems.append(f"{file_name} has no auto_map entry for {auto_class}")
                continue
            module = auto_map[auto_class].rsplit(".", 1)[0]
            if not (folder / f"{module}.py").is_file():
                problems.append(f"{file_name} maps {auto_class} to {module}.py, which is missing")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        problems.append("no safetensors weights")
    if not (folder / "chat_template.jinja").is_file() and "chat_template" not in _json(
        folder / "processor_config.json"
    ):
        problems.append("no chat template")
    if not (folder / "tokenizer_config.json").is_file():
        problems.append("no tokenizer")
    return problems


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload STORM checkpoint",
):
    """Upload a saved STORM checkpoint folder in one commit, after checking it is self-contained. A folder without a
    model card gets one written from its config. Returns the `CommitInfo`."""
    from .modeling import StormConfig

    folder = Path(folder)
    problems = self_contained_problems(folder)
    if problems:
        raise ValueError(
            f"'{folder}' is not a self-contained STORM checkpoint ({'; '.join(problems)}); save it with "
            "`storm_hf.hub.save_checkpoint` (or `storm-hf compose` / `storm-hf convert`)."
        )
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts)
    ]
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if not (folder / "README.md").is_file():
        card = str(model_card(StormConfig.from_pretrained(folder), repo_id))
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    return api.create_commit(
        repo_id, operations, commit_message=commit_message, token=token, revision=revision, create_pr=create_pr
    )


def push_to_hub(
    model,
    processor,
    repo_id: str,
    *,
    base_models=(),
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: str | int = "5GB",
    commit_message: str = "Upload STORM checkpoint",
):
    """Push a STORM model and its processor as one self-contained repo (weights, config + code, processor + chat
    template, model card) in a single commit. Returns the `CommitInfo`."""
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(
            model, processor, folder, base_models=base_models, repo_id=repo_id, max_shard_size=max_shard_size
        )
        return push_folder(
            folder,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
        )


__all__ = [
    "is_hub_id",
    "model_card",
    "push_folder",
    "push_to_hub",
    "save_checkpoint",
    "self_contained_problems",
    "token_budget_table",
]
