"""Fixtures shared by the test files. Helpers that are not fixtures live in media.py (videos, images, tokenizer,
processor), modeling_utils.py (tiny models and their inputs) and checkpoints.py (tiny checkpoints on disk); test files
never import each other."""

import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.hf_api import CommitInfo, RepoUrl


# Tests never reach the Hub: everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------- the synthetic temporal task (training tests)


@pytest.fixture(scope="session")
def task_tokenizer():
    from storm_hf.synthetic import build_task_tokenizer

    return build_task_tokenizer()


@pytest.fixture(scope="session")
def task_processor(task_tokenizer):
    from storm_hf.synthetic import build_task_processor

    return build_task_processor(task_tokenizer)


@pytest.fixture(scope="session")
def temporal_task(tmp_path_factory):
    """16 training and 4 test clips of the task (`storm_hf.synthetic.generate_temporal_task`), videos as files."""
    from storm_hf.synthetic import generate_temporal_task

    return generate_temporal_task(tmp_path_factory.mktemp("task"), num_train=16, num_test=4, seed=0)


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """The trained task model shipped for `storm-hf demo` (a checkpoint directory with its processor)."""
    (folder,) = {
        config.parent
        for config in (Path(__file__).parents[1] / "src" / "storm_hf").rglob("demo_checkpoint/config.json")
    }
    return folder


# ---------------------------------------------------------------- the Hub (push tests)


class CapturedHub:
    """Stands in for the Hub: `create_repo` and `create_commit` write each repo's files under `root/<repo_id>`."""

    def __init__(self, root: Path):
        self.root = root
        self.commits: list[tuple[str, list[str]]] = []

    def create_repo(self, api, repo_id, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, api, repo_id, operations, *, commit_message, **kwargs):
        paths = []
        for operation in operations:
            assert isinstance(operation, CommitOperationAdd), operation
            target = self.root / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            source = operation.path_or_fileobj
            if isinstance(source, (str, Path)):
                shutil.copyfile(source, target)
            else:
                target.write_bytes(source if isinstance(source, bytes) else source.read())
            paths.append(operation.path_in_repo)
        self.commits.append((repo_id, paths))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}",
            commit_message=commit_message,
            commit_description="",
            oid="0" * 40,
        )

    def files(self, repo_id: str) -> Path:
        return self.root / repo_id


@pytest.fixture
def hub(tmp_path, monkeypatch) -> CapturedHub:
    """The Hub for one test: what `HfApi.create_repo` / `create_commit` are given lands in a `CapturedHub`."""
    captured = CapturedHub(tmp_path / "hub")
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: captured.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(
        HfApi,
        "create_commit",
        lambda api, repo_id, operations, **kw: captured.create_commit(api, repo_id, operations, **kw),
    )
    return captured


def pytest_configure(config):
    # Markers of transformers' common test mixins (test_transformers_common.py); transformers registers them in the
    # conftest of its repository, which its sdist does not ship.
    flash_attention = ("flash_attn_test", "flash_attn_3_test", "flash_attn_4_test")
    for marker in ("accelerate_tests", *flash_attention, "slow", "torch_compile_test"):
        config.addinivalue_line("markers", f"{marker}: a test of transformers' common test mixins")
