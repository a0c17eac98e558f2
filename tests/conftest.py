import os


# Tests never reach the Hub: everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # Markers of transformers' common test mixins (test_transformers_common.py); transformers registers them in the
    # conftest of its repository, which its sdist does not ship.
    flash_attention = ("flash_attn_test", "flash_attn_3_test", "flash_attn_4_test")
    for marker in ("accelerate_tests", *flash_attention, "slow", "torch_compile_test"):
        config.addinivalue_line("markers", f"{marker}: a test of transformers' common test mixins")
