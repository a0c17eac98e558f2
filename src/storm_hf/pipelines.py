"""The `video-text-to-text` pipeline task (transformers has none)."""


def register_pipelines():
    """Register the `video-text-to-text` task."""
