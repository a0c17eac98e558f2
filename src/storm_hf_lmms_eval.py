"""lmms-eval's entry point for storm-hf (`lmms_eval.models` in setup.cfg): the model `storm`, without importing it.

lmms-eval imports every entry point of its `lmms_eval.models` group when it builds its model list, so this module
imports only lmms-eval's registry; the adapter, `storm_hf.integrations.lmms_eval.Storm` (torch, transformers, STORM), is
imported only when `--model storm` is chosen. It lives outside the `storm_hf` package because importing any
`storm_hf` module first imports `storm_hf/__init__.py`, which loads the model.
"""

from lmms_eval.models.registry_v2 import ModelManifest


STORM = ModelManifest(model_id="storm", chat_class_path="storm_hf.integrations.lmms_eval.Storm")
