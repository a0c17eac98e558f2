"""bfloat16 and float32 against a float64 reference, at tolerances derived from each format's rounding.

A format with unit roundoff u (2^-8 for bfloat16's 8-bit significand, 2^-24 for float32) computes logits whose error
is a few u at the logits' scale: each rounding of an activation on the way to the logits adds at most u relative to
it. On the tiny models below bfloat16 measures 1.6-2.5 u x max|logit| (4 seeds, 4 and 8 frames) and float32 about
10 u; one extra rounding of the video tokens to float8 (3-bit significand) in the bf16 path measures 5.8-7.1 u, and
rounding them to bfloat16 in the float32 path about 2500 u. The tolerances sit between.
"""

import copy

import pytest
import torch
from modeling_utils import tiny_model, video_inputs


BF16_ROUNDINGS = 4  # tolerance in units of bf16 roundoff at the logits' scale (measured 1.6-2.5; a float8 bug 5.8+)
FP32_ROUNDINGS = 64  # in units of float32 roundoff (measured ~10; a bf16 rounding of the video tokens ~2500)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
ROUNDINGS = {torch.bfloat16: BF16_ROUNDINGS, torch.float32: FP32_ROUNDINGS}


def cast(inputs: dict, dtype: torch.dtype) -> dict:
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}


def logits_in(model, dtype: torch.dtype, inputs: dict) -> torch.Tensor:
    """`model`'s logits with weights and pixels in `dtype`, as float64 for comparison."""
    with torch.no_grad():
        return copy.deepcopy(model).to(dtype)(**cast(inputs, dtype)).logits.double()


def tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    return ROUNDINGS[dtype] * UNIT_ROUNDOFF[dtype] * reference.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("seed,num_frames", [(0, 4), (1, 8)])
def test_logits_match_float64_within_the_rounding_of_the_format(dtype, seed, num_frames):
    model = tiny_model(seed)
    inputs = video_inputs(model.config, [[num_frames]], seed=seed)
    reference = logits_in(model, torch.float64, inputs)
    error = (logits_in(model, dtype, inputs) - reference).abs().max().item()
    allowed = tolerance(dtype, reference)
    assert error < allowed, f"{dtype} logits differ from float64 by {error:.3g} > {allowed:.3g}"
    # the comparison can see the video: another video moves the logits far more than the tolerance
    other_video = video_inputs(model.config, [[num_frames]], seed=seed + 100)
    other_video["input_ids"] = inputs["input_ids"]  # the same text: only the pixels differ
    moved = (logits_in(model, torch.float64, other_video) - reference).abs().max().item()
    assert moved > 20 * tolerance(torch.bfloat16, reference), (moved, allowed)


def test_bfloat16_generation_follows_the_float64_model():
    """bf16 `generate` (prefill, then cached single-token steps): every step's logits equal, within the bf16
    tolerance, the float64 model's logits at the same position of the generated sequence (teacher-forced)."""
    model = tiny_model()
    inputs = video_inputs(model.config, [[4]])
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        generated = bf16.generate(
            **cast(inputs, torch.bfloat16),
            max_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt_length = inputs["input_ids"].shape[1]
    assert generated.sequences.shape == (1, prompt_length + 4)
    full = dict(inputs, input_ids=generated.sequences, attention_mask=torch.ones_like(generated.sequences))
    reference = logits_in(model, torch.float64, full)[0, prompt_length - 1 : -1]
    steps = torch.cat(generated.logits).double()
    assert (steps - reference).abs().max().item() < tolerance(torch.bfloat16, reference)
    # greedy: each generated token is the argmax of its own step's logits
    assert torch.equal(steps.argmax(-1), generated.sequences[0, prompt_length:])
