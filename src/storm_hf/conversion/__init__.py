"""Building STORM checkpoints from other checkpoints.

- `compose_storm`: a pretrained SigLIP vision tower + a decoder-only language model (Llama, Mistral, Qwen2, Qwen3, ...
  or Qwen2-VL's) + its tokenizer, with a freshly initialised temporal projector (the paper's starting point for
  alignment).
- `convert_vila_checkpoint`: a VILA/NVILA-style training checkpoint (`llm/`, `vision_tower/`, `mm_projector/`).

Both map keys strictly (`checkpoint_io.KeyMapping`) and raise `ConversionError` naming any key they cannot place.
"""

from .checkpoint_io import ConversionError
from .compose import compose_storm
from .vila import convert_vila_checkpoint


__all__ = ["ConversionError", "compose_storm", "convert_vila_checkpoint"]
