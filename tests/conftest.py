import os


# Tests never reach the Hub: everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
