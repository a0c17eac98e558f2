#!/usr/bin/env bash
# Creates .venv-lmms: lmms-eval 0.7.3 in an environment of its own (its many dependencies stay out of .venv), with
# storm-hf installed in it (editable), whose entry point registers `--model storm`. An existing .venv-lmms is reused.
# tests/test_lmms_eval.py runs lmms-eval's CLI from it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-lmms/bin/python ]; then
    python3 -m venv .venv-lmms
    .venv-lmms/bin/pip install -q --upgrade pip
    .venv-lmms/bin/pip install -q torch==2.14.1 torchvision==0.29.1  # the CPU build, before anything pulls CUDA torch
fi
# lmms-eval asks only transformers>=4.39 (keep the version storm-hf is tested with); its Qwen/LLaVA adapters need
# decord; filelock 4 breaks its CLI (`No module named 'filelock._api'`).
.venv-lmms/bin/pip install -q lmms-eval==0.7.3 "transformers==5.23.0" decord "filelock<4" "av>=12"
.venv-lmms/bin/pip install -q --no-deps -e .
