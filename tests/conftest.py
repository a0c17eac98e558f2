import os
from pathlib import Path

import pytest


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
    pytest.importorskip("datasets")
    pytest.importorskip("av")
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


def pytest_configure(config):
    # Markers of transformers' common test mixins (test_transformers_common.py); transformers registers them in the
    # conftest of its repository, which its sdist does not ship.
    flash_attention = ("flash_attn_test", "flash_attn_3_test", "flash_attn_4_test")
    for marker in ("accelerate_tests", *flash_attention, "slow", "torch_compile_test"):
        config.addinivalue_line("markers", f"{marker}: a test of transformers' common test mixins")
