"""The chunked selective scan against the token loop: values, gradients, state passing, memory, dtypes."""

import inspect
import math
import types

import pytest
import torch

from storm_hf.modeling import selective_scan as selective_scan_module
from storm_hf.modeling.selective_scan import (
    _softplus,
    causal_conv1d_applies,
    cuda_kernels_apply,
    mamba_ssm_scan_applies,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)


CHUNK_SIZE = inspect.signature(selective_scan_chunked).parameters["chunk_size"].default
OPTIONAL_INPUTS = ("D", "z", "delta_bias", "initial_state")


def make_inputs(seqlen, batch=2, d_inner=6, d_state=4, dtype=torch.float32, dt_range=(1e-3, 1e-1), seed=0):
    """Random inputs initialized like a Mamba layer: A = -[1 .. d_state], dt_bias = softplus^-1(dt), dt log-uniform."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    dt_min, dt_max = dt_range
    dt = torch.exp(torch.rand(d_inner, generator=generator, dtype=torch.float64) * math.log(dt_max / dt_min)) * dt_min
    inputs = dict(
        u=randn(batch, d_inner, seqlen),
        delta=0.5 * randn(batch, d_inner, seqlen),  # dt_proj output, before the bias
        A=-torch.arange(1, d_state + 1, dtype=torch.float64).repeat(d_inner, 1),
        B=randn(batch, d_state, seqlen),
        C=randn(batch, d_state, seqlen),
        D=randn(d_inner),
        z=randn(batch, d_inner, seqlen),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
        initial_state=randn(batch, d_inner, d_state),
    )
    return {name: tensor.to(dtype).requires_grad_() for name, tensor in inputs.items()}


def run_with_grads(scan, inputs, **options):
    """Outputs of `scan`, then the gradients of a fixed random projection of them w.r.t. every input."""
    outputs = scan(**inputs, **options)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator().manual_seed(1)
    loss = sum((output * torch.randn(output.shape, generator=generator)).sum() for output in outputs)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return outputs, dict(zip(inputs, grads))


def assert_matches_reference(inputs, rtol=1e-5, chunk_size=CHUNK_SIZE, **options):
    """Outputs and gradients agree within `rtol`, plus an absolute `rtol / 10` of each tensor's largest magnitude."""
    outputs, grads = run_with_grads(selective_scan_chunked, inputs, chunk_size=chunk_size, **options)
    expected_outputs, expected_grads = run_with_grads(selective_scan_reference, inputs, **options)
    for name, actual, expected in [
        *(("output", output, expected) for output, expected in zip(outputs, expected_outputs, strict=True)),
        *((f"grad of {name}", grads[name], expected) for name, expected in expected_grads.items()),
    ]:
        atol = rtol / 10 * expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda message: f"{name}: {message}")


@pytest.mark.parametrize("seqlen", [1, 2, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5])
@pytest.mark.parametrize("optional", [(), ("D", "z"), ("delta_bias",), OPTIONAL_INPUTS])
def test_chunked_matches_reference(seqlen, optional):
    inputs = make_inputs(seqlen)
    inputs = {name: tensor for name, tensor in inputs.items() if name not in OPTIONAL_INPUTS or name in optional}
    if "delta_bias" not in optional:  # delta is then used as given: make it a positive time step
        inputs["delta"] = torch.nn.functional.softplus(inputs["delta"].detach() - 4).requires_grad_()
    assert_matches_reference(
        inputs, delta_softplus="delta_bias" in optional, return_last_state="initial_state" in optional
    )


@pytest.mark.parametrize("seqlen", [1, 2, 7, CHUNK_SIZE, 3 * CHUNK_SIZE + 5])
def test_float64_matches_reference_to_rounding(seqlen):
    inputs = make_inputs(seqlen, dtype=torch.float64)
    assert_matches_reference(inputs, rtol=1e-12, delta_softplus=True, return_last_state=True)


@pytest.mark.parametrize("chunk_size", [1, 5, 16])
def test_chunk_sizes(chunk_size):
    assert_matches_reference(make_inputs(37), delta_softplus=True, return_last_state=True, chunk_size=chunk_size)


def test_long_sequence():
    inputs = make_inputs(4096, batch=1, d_inner=4, d_state=4)
    assert_matches_reference(inputs, delta_softplus=True, return_last_state=True)


def test_decays_that_underflow():
    """Time steps up to 30: products of decays underflow float32 within a chunk."""
    inputs = make_inputs(3 * CHUNK_SIZE, dt_range=(1e-3, 30.0), d_state=16)
    assert_matches_reference(inputs, delta_softplus=True, return_last_state=True)


def test_continuation_from_last_state():
    inputs = {name: tensor.detach() for name, tensor in make_inputs(2 * CHUNK_SIZE + 21).items()}
    y, last_state = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
    split = CHUNK_SIZE + 10
    per_token = ("u", "delta", "B", "C", "z")
    first, second = (
        {name: tensor[..., part] if name in per_token else tensor for name, tensor in inputs.items()}
        for part in (slice(None, split), slice(split, None))
    )
    y_first, state_first = selective_scan_chunked(**first, delta_softplus=True, return_last_state=True)
    second["initial_state"] = state_first
    y_second, state_second = selective_scan_chunked(**second, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(torch.cat([y_first, y_second], dim=-1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state_second, last_state, rtol=1e-5, atol=1e-6)


def test_gradcheck():
    inputs = make_inputs(11, batch=1, d_inner=2, d_state=3, dtype=torch.float64)

    def scan(*tensors):
        return selective_scan_chunked(
            **dict(zip(inputs, tensors)), delta_softplus=True, return_last_state=True, chunk_size=4
        )

    assert torch.autograd.gradcheck(scan, tuple(inputs.values()))


def test_backward_saves_the_inputs_and_one_state_per_chunk():
    """What autograd keeps, counted in bytes against what the scan needs: u, delta, z, B, C, A, D, delta_bias and the
    state before each chunk (float32: 4 bytes each). Only A's transposed copy and the chunk states are new memory; the
    rest are the inputs themselves. Nothing of size (batch, d_inner, seqlen, d_state) is kept."""
    batch, d_inner, d_state, seqlen = 1, 32, 16, 4 * CHUNK_SIZE
    inputs = make_inputs(seqlen, batch=batch, d_inner=d_inner, d_state=d_state)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        y, last_state = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
    chunk_states = seqlen // CHUNK_SIZE * batch * d_state * d_inner
    per_token = batch * seqlen * (3 * d_inner + 2 * d_state)  # u, delta, z; B, C
    parameters = d_inner * d_state + 2 * d_inner  # A; D, delta_bias
    assert sum(tensor.nbytes for tensor in saved) <= 4 * (per_token + parameters + chunk_states)
    input_memory = {tensor.untyped_storage().data_ptr() for tensor in inputs.values()}
    new = [tensor for tensor in saved if tensor.untyped_storage().data_ptr() not in input_memory]
    assert sum(tensor.nbytes for tensor in new) <= 4 * (d_inner * d_state + chunk_states)
    (y.sum() + last_state.sum()).backward()


def test_bfloat16_inputs_match_the_float64_token_loop_to_bfloat16_rounding():
    """bfloat16 inputs are scanned in float32: the last state (float32) matches the float64 token loop on the same
    values to float32 accuracy, and y differs from it by its rounding to bfloat16 alone (half a bfloat16 ulp: 2^-8
    relative)."""
    inputs = {name: tensor.detach().bfloat16() for name, tensor in make_inputs(CHUNK_SIZE + 7).items()}
    y, last_state = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
    expected_y, expected_state = selective_scan_reference(
        **{name: tensor.double() for name, tensor in inputs.items()}, delta_softplus=True, return_last_state=True
    )
    assert y.dtype == torch.bfloat16 and last_state.dtype == torch.float32
    float32_error = 1e-5 * expected_y.abs().max().item()
    torch.testing.assert_close(y.double(), expected_y, rtol=2**-8, atol=float32_error)
    torch.testing.assert_close(
        last_state.double(), expected_state, rtol=1e-5, atol=1e-5 * expected_state.abs().max().item()
    )


def test_selective_scan_runs_the_chunked_scan_on_cpu():
    inputs = {name: tensor.detach() for name, tensor in make_inputs(CHUNK_SIZE + 3).items()}
    y, last_state = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    expected_y, expected_state = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, expected_y, rtol=0, atol=0)
    torch.testing.assert_close(last_state, expected_state, rtol=0, atol=0)


def test_softplus_is_accurate_over_the_whole_float_range():
    x = torch.cat([torch.linspace(-80, 80, 100_001), torch.tensor([-1e4, -1e3, 1e3, 1e4])])
    expected = torch.nn.functional.softplus(x.double(), threshold=100)  # exact to far below float32 rounding
    actual = _softplus(x).double()
    torch.testing.assert_close(actual, expected, rtol=3e-7, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda inputs: inputs.update(A=torch.complex(inputs["A"], torch.ones_like(inputs["A"]))), "`A` is complex"),
        (lambda inputs: inputs.update(B=torch.randn(6, 4)), r"time-invariant `\(d_inner, d_state\)` `B`"),
        (lambda inputs: inputs.update(C=inputs["C"][:, None]), r"grouped .* `C`"),
    ],
)
@pytest.mark.parametrize("scan", [selective_scan, selective_scan_chunked])
def test_unsupported_mamba_ssm_variants_are_rejected(scan, change, message):
    inputs = {name: tensor.detach() for name, tensor in make_inputs(5).items()}
    change(inputs)
    with pytest.raises(ValueError, match=message):
        scan(**inputs)


def test_cuda_fast_path_rule():
    def tensor(dtype, cuda=True):  # only the device and dtype matter: no GPU needed
        return types.SimpleNamespace(is_cuda=cuda, dtype=dtype)

    assert cuda_kernels_apply(tensor(torch.bfloat16)) and cuda_kernels_apply(tensor(torch.float32), conv_kernel=4)
    assert not cuda_kernels_apply(tensor(torch.float64))
    assert not cuda_kernels_apply(tensor(torch.float32, cuda=False))
    assert [width for width in range(1, 7) if cuda_kernels_apply(tensor(torch.float16), conv_kernel=width)] == [2, 3, 4]


def test_each_kernel_runs_where_installed_applicable_and_starting_from_zeros(monkeypatch):
    """The rules the scan and the mixer share: a kernel needs its library, `cuda_kernels_apply`, and no given state."""
    cuda, state = types.SimpleNamespace(is_cuda=True, dtype=torch.float32), torch.zeros(1)
    for installed in (False, True):
        monkeypatch.setattr(selective_scan_module, "is_mamba_ssm_available", installed)
        monkeypatch.setattr(selective_scan_module, "causal_conv1d_fn", object() if installed else None)
        assert mamba_ssm_scan_applies(cuda) == installed and causal_conv1d_applies(cuda, 4) == installed
    assert not mamba_ssm_scan_applies(cuda, initial_state=state)
    assert not mamba_ssm_scan_applies(cuda, last_state_needs_grad=True)
    assert not mamba_ssm_scan_applies(types.SimpleNamespace(is_cuda=False, dtype=torch.float32))
    assert not causal_conv1d_applies(cuda, 4, conv_state=state) and not causal_conv1d_applies(cuda, 5)


def test_a_last_state_that_needs_a_gradient_never_goes_to_the_mamba_ssm_kernel(monkeypatch):
    """mamba-ssm's `selective_scan_fn` returns the last state without a gradient: such calls take the chunked scan."""
    kernel_calls = []
    monkeypatch.setattr(selective_scan_module, "is_mamba_ssm_available", True)
    monkeypatch.setattr(selective_scan_module, "cuda_kernels_apply", lambda tensor, conv_kernel=None: True)
    monkeypatch.setattr(
        selective_scan_module,
        "mamba_ssm_selective_scan_fn",
        lambda *args: kernel_calls.append(args) or selective_scan_chunked(*args),
    )
    inputs = make_inputs(CHUNK_SIZE + 3)
    initial_state = inputs.pop("initial_state")
    selective_scan(**inputs, delta_softplus=True)  # no state returned: the kernel
    with torch.no_grad():
        selective_scan(**inputs, delta_softplus=True, return_last_state=True)  # no gradient needed: the kernel
    assert len(kernel_calls) == 2
    _, last_state = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert len(kernel_calls) == 2 and last_state.requires_grad
    _, expected_state = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True)
    (grad,) = torch.autograd.grad(last_state.sum(), inputs["u"])
    (expected_grad,) = torch.autograd.grad(expected_state.sum(), inputs["u"])
    torch.testing.assert_close(grad, expected_grad)
    selective_scan(**inputs, delta_softplus=True, initial_state=initial_state)  # a given state: never the kernel
    assert len(kernel_calls) == 2
