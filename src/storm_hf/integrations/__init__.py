"""Adapters that let other tools drive STORM: `lmms_eval` (the lmms-eval model `storm`)."""
