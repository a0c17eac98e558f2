#!/usr/bin/env bash
# Creates .venv and installs storm-hf with every extra but [cuda]. Torch comes first, pinned to the CPU build this
# project is tested with, so that pip does not pull a CUDA torch for peft/accelerate.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e ".[video,train,test,bench,serving]"
