"""Selective scan (the Mamba v1 SSM recurrence) of STORM's temporal projector, and the rules for its CUDA kernels.

`selective_scan` runs mamba_ssm's CUDA kernel where it applies and `selective_scan_chunked`, a pure PyTorch scan with
memory linear in the sequence length, everywhere else. Tensors follow mamba_ssm's `selective_scan_fn` layout.
This module is the one place that decides which CUDA kernels run (`mamba_ssm_scan_applies`,
`causal_conv1d_applies`); the Mamba mixer asks it rather than testing devices and imports itself.
"""

import torch
import torch.nn.functional as F


try:  # mamba_ssm loads its CUDA extension on import, which fails on machines without CUDA
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_ssm_selective_scan_fn
except (ImportError, OSError, RuntimeError):
    mamba_ssm_selective_scan_fn = None

try:  # CUDA kernel of the causal depthwise convolution (optional extra `storm-hf[cuda]`)
    from causal_conv1d import causal_conv1d_fn
except (ImportError, OSError, RuntimeError):
    causal_conv1d_fn = None

is_mamba_ssm_available = mamba_ssm_selective_scan_fn is not None

CUDA_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # mamba-ssm and causal-conv1d reject float64
CAUSAL_CONV1D_WIDTHS = (2, 3, 4)  # the convolution widths causal-conv1d compiles


def cuda_kernels_apply(tensor: torch.Tensor, conv_kernel: int | None = None) -> bool:
    """Whether the CUDA kernels can take `tensor`: a CUDA tensor in float32, float16 or bfloat16 (and, given
    `conv_kernel`, a convolution width of 2..4). Whether they are installed is not checked: see
    `mamba_ssm_scan_applies` and `causal_conv1d_applies`."""
    return (
        tensor.is_cuda
        and tensor.dtype in CUDA_KERNEL_DTYPES
        and (conv_kernel is None or conv_kernel in CAUSAL_CONV1D_WIDTHS)
    )


def mamba_ssm_scan_applies(
    u: torch.Tensor, initial_state: torch.Tensor | None = None, last_state_needs_grad: bool = False
) -> bool:
    """The one rule for mamba-ssm's CUDA scan: installed, `cuda_kernels_apply(u)`, no `initial_state` (the kernel
    starts from zeros) and no returned last state that needs a gradient (the kernel returns it without one).
    `selective_scan` follows it; the mixer scans a whole sequence at once at inference only where it holds."""
    return is_mamba_ssm_available and cuda_kernels_apply(u) and initial_state is None and not last_state_needs_grad


def causal_conv1d_applies(x: torch.Tensor, conv_kernel: int, conv_state: torch.Tensor | None = None) -> bool:
    """The one rule for causal-conv1d's CUDA convolution: installed, `cuda_kernels_apply(x, conv_kernel)`, and no
    `conv_state` (the kernel pads with zeros)."""
    return causal_conv1d_fn is not None and cuda_kernels_apply(x, conv_kernel) and conv_state is None


def check_scan_inputs(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    """Rejects the mamba-ssm input variants the PyTorch scan does not implement, naming what it expects."""
    if A.is_complex():
        raise ValueError(
            "`A` is complex; STORM's selective scan implements real, negative `A` only (Mamba v1's S4D-real "
            "initialisation, `A = -exp(A_log)`): the imaginary part would be dropped. Pass a real `A`."
        )
    for name, tensor in (("B", B), ("C", C)):
        if tensor.dim() != 3:
            variant = (
                "time-invariant `(d_inner, d_state)`"
                if tensor.dim() == 2
                else "grouped `(batch, groups, d_state, seqlen)`"
            )
            raise ValueError(
                f"`{name}` has shape {tuple(tensor.shape)}: {variant} `{name}` is not supported; STORM's selective "
                f"scan takes a selective `{name}` of shape `(batch, d_state, seqlen)` (one group)."
            )


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
):
    """
    Selective scan with mamba_ssm's CUDA kernel where `mamba_ssm_scan_applies`, else `selective_scan_chunked`.

    Args:
        u, delta, z: `(batch, d_inner, seqlen)`.
        A: `(d_inner, d_state)`, real and negative.
        B, C: `(batch, d_state, seqlen)`.
        D, delta_bias: `(d_inner,)`.
        initial_state: `(batch, d_inner, d_state)`, the state before the first token (zeros if `None`).

    Returns:
        y `(batch, d_inner, seqlen)` in `u`'s dtype, and with `return_last_state` the final state
        `(batch, d_inner, d_state)` in float32 (float64 for float64 inputs on CPU).
    """
    check_scan_inputs(A, B, C)
    state_needs_grad = (
        return_last_state
        and torch.is_grad_enabled()
        and any(tensor is not None and tensor.requires_grad for tensor in (u, delta, A, B, C, D, z, delta_bias))
    )
    if mamba_ssm_scan_applies(u, initial_state, state_needs_grad):
        return mamba_ssm_selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_chunked(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state=initial_state
    )


def selective_scan_reference(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
):
    """
    Token-by-token loop, the ground truth for the tests (mamba_ssm's `selective_scan_ref` plus `initial_state`).

    Shapes as in `selective_scan`: u, delta, z `(batch, d_inner, seqlen)`; A `(d_inner, d_state)`;
    B, C `(batch, d_state, seqlen)`; D, delta_bias `(d_inner,)`; initial_state `(batch, d_inner, d_state)`.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_in, delta, A, B, C = (tensor.to(dtype) for tensor in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, _ = u.shape
    state = u_in.new_zeros(batch, d_inner, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u_in)
    ys = []
    for decay_t, delta_B_u_t, C_t in zip(decay.unbind(2), delta_B_u.unbind(2), C.unbind(2)):
        state = decay_t * state + delta_B_u_t
        ys.append(torch.einsum("bdn,bn->bd", state, C_t))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u_in * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, state) if return_last_state else y


def selective_scan_chunked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
    chunk_size=32,
):
    """
    Pure PyTorch selective scan, fused like mamba_ssm's kernel: chunks of `chunk_size` tokens are processed one after
    the other, each from its inputs to its gated output, so every intermediate stays small enough for the CPU caches.

    Computes in float32 (float64 for float64 inputs). Backward keeps only the inputs and one state per chunk and
    recomputes each chunk's states, so memory is linear in `seqlen` (no `(batch, d_inner, seqlen, d_state)` tensor).
    The tensors may have any strides: `(batch, seqlen, channels)` memory seen through `.transpose(1, 2)` (what a
    `Linear` produces) is read in place.

    Args:
        u, delta, z: `(batch, d_inner, seqlen)`.
        A: `(d_inner, d_state)`, real and negative.
        B, C: `(batch, d_state, seqlen)`.
        D, delta_bias: `(d_inner,)`.
        initial_state: `(batch, d_inner, d_state)`, the state before the first token (zeros if `None`).
        chunk_size: tokens per chunk; each chunk materializes a few `(chunk_size, batch, d_state, d_inner)` buffers
            (32: as fast as 64 on one CPU thread at d_inner 1792, and half the buffers: 2 x 7.6 MB instead of 15 MB).

    Returns:
        y `(batch, d_inner, seqlen)` in `u`'s dtype, and with `return_last_state` the final state
        `(batch, d_inner, d_state)` in the compute dtype.
    """
    check_scan_inputs(A, B, C)
    dtype = torch.promote_types(u.dtype, torch.float32)
    # The scan stores states as (d_state, d_inner), so that the innermost dimension is long enough to vectorize well.
    y, last_state = _SelectiveScanFunction.apply(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A.to(dtype).t().contiguous(),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D,
        None if z is None else z.transpose(1, 2),
        delta_bias,
        delta_softplus,
        None if initial_state is None else initial_state.to(dtype).transpose(1, 2).contiguous(),
        chunk_size,
    )
    y = y.transpose(1, 2)
    return (y, last_state.transpose(1, 2).contiguous()) if return_last_state else y


class _SelectiveScanFunction(torch.autograd.Function):
    """
    y_t = (C_t . h_t + D u_t) * silu(z_t) with h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t and dt = softplus(delta +
    delta_bias) (or delta + delta_bias), on `(batch, seqlen, channels)` tensors: u, delta, z `(batch, seqlen, d_inner)`;
    B, C `(batch, seqlen, d_state)`; A_t `(d_state, d_inner)` in the compute dtype; D, delta_bias `(d_inner,)`;
    initial_state `(batch, d_state, d_inner)` or `None`. Returns y `(batch, seqlen, d_inner)` in u's dtype and the
    last state `(batch, d_state, d_inner)`.

    Each chunk runs time-major, on `(chunk_size + 1, batch, d_state, d_inner)` buffers reused from chunk to chunk:
    allocating them per chunk costs more in page faults than the arithmetic.
    """

    @staticmethod
    def forward(ctx, u, delta, A_t, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size):
        batch, seqlen, _ = u.shape
        chunks = _ChunkReader(chunk_size, A_t.dtype, delta_bias, delta_softplus)
        slices = chunks.slices(seqlen)
        # chunk_states[i]: the state before chunk i; the last one is the final state
        chunk_states = A_t.new_empty(len(slices) + 1, batch, *A_t.shape)
        chunk_states[0] = 0 if initial_state is None else initial_state
        y = torch.empty_like(u)
        buffer_length = min(chunk_size, seqlen)
        states, decay = _new_buffer(A_t, batch, buffer_length + 1), _new_buffer(A_t, batch, buffer_length)
        for index, chunk in enumerate(slices):
            u_c, _, dt_c, B_c, C_c, z_c = chunks.read(chunk, u, delta, B, C, z)
            states_c, _ = _chunk_states_(states, decay, dt_c, u_c, A_t, B_c, chunk_states[index])
            y_c = _project(C_c, states_c[1:])
            if D is not None:
                y_c.addcmul_(u_c, D)
            if z_c is not None:
                y_c.mul_(F.silu(z_c))
            y[:, chunk] = y_c.transpose(0, 1)
            chunk_states[index + 1] = states_c[-1]
        ctx.save_for_backward(u, delta, A_t, B, C, D, z, delta_bias, chunk_states[:-1])
        ctx.chunk_size, ctx.delta_softplus = chunk_size, delta_softplus
        return y, chunk_states[-1].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A_t, B, C, D, z, delta_bias, chunk_states = ctx.saved_tensors
        chunks = _ChunkReader(ctx.chunk_size, A_t.dtype, delta_bias, ctx.delta_softplus)
        batch, seqlen, _ = u.shape
        # gradient w.r.t. the state after the current chunk, carried from chunk to chunk
        grad_state = grad_last_state
        grad_u, grad_delta, grad_B, grad_C = (torch.empty_like(tensor) for tensor in (u, delta, B, C))
        grad_z = None if z is None else torch.empty_like(z)
        grad_A_t = torch.zeros_like(A_t)
        grad_D, grad_delta_bias = (
            None if tensor is None else A_t.new_zeros(tensor.shape) for tensor in (D, delta_bias)
        )
        buffer_length = min(chunks.size, seqlen)
        states = _new_buffer(A_t, batch, buffer_length + 1)
        decay, grad_h, product = (_new_buffer(A_t, batch, buffer_length) for _ in range(3))
        for index, chunk in reversed(list(enumerate(chunks.slices(seqlen)))):
            u_c, delta_c, dt_c, B_c, C_c, z_c = chunks.read(chunk, u, delta, B, C, z)
            grad_y_c = chunks.read_one(grad_y, chunk)
            length = u_c.shape[0]
            grad_h_c, product_c = grad_h[:length], product[:length]
            states_c, decay_c = _chunk_states_(states, decay, dt_c, u_c, A_t, B_c, chunk_states[index])

            # y = (y_ssm + D u) * silu(z): grad_y_c becomes the gradient w.r.t. y_ssm
            if z_c is not None:
                gate_sigmoid = torch.sigmoid(z_c)
                ungated = _project(C_c, states_c[1:])
                if D is not None:
                    ungated.addcmul_(u_c, D)
                grad_z_c = grad_y_c * ungated * gate_sigmoid * (1 + z_c * (1 - gate_sigmoid))
                grad_z[:, chunk] = grad_z_c.transpose(0, 1)
                grad_y_c = grad_y_c * z_c * gate_sigmoid
            if D is not None:
                grad_D += (grad_y_c * u_c).sum((0, 1))

            grad_C_c = torch.mul(states_c[1:], grad_y_c.unsqueeze(-2), out=product_c).sum(-1)
            grad_C[:, chunk] = grad_C_c.transpose(0, 1)

            # Adjoint dh_t = C_t grad_y_t + decay_{t+1} dh_{t+1}: the recurrence run backwards
            torch.mul(C_c.unsqueeze(-1), grad_y_c.unsqueeze(-2), out=grad_h_c)
            grad_h_c[-1] += grad_state
            for t in reversed(range(length - 1)):
                grad_h_c[t].addcmul_(decay_c[t + 1], grad_h_c[t + 1])
            grad_state = grad_h_c[0] * decay_c[0]

            # h_t = decay_t h_{t-1} + dt_t u_t B_t
            grad_dt_u = _project(B_c, grad_h_c)
            grad_B_c = torch.mul(grad_h_c, (dt_c * u_c).unsqueeze(-2), out=product_c).sum(-1)
            grad_B[:, chunk] = grad_B_c.transpose(0, 1)
            # d loss / d (dt_t A) = dh_t * h_{t-1} * decay_t, computed in place in the recomputed states
            grad_dt_A = states_c[:-1].mul_(grad_h_c).mul_(decay_c)
            grad_A_t += torch.mul(grad_dt_A, dt_c.unsqueeze(-2), out=product_c).sum((0, 1))
            grad_dt = grad_dt_u * u_c + torch.mul(grad_dt_A, A_t, out=product_c).sum(-2)
            grad_u_c = grad_dt_u * dt_c
            if D is not None:
                grad_u_c += grad_y_c * D
            grad_u[:, chunk] = grad_u_c.transpose(0, 1)
            if chunks.delta_softplus:
                grad_dt *= torch.sigmoid(delta_c)
            grad_delta[:, chunk] = grad_dt.transpose(0, 1)
            if delta_bias is not None:
                grad_delta_bias += grad_dt.sum((0, 1))
        grad_initial_state = grad_state if ctx.needs_input_grad[9] else None
        return (
            grad_u,
            grad_delta,
            grad_A_t,
            grad_B,
            grad_C,
            grad_D,
            grad_z,
            grad_delta_bias,
            None,
            grad_initial_state,
            None,
        )


class _ChunkReader:
    """Reads one chunk of the `(batch, seqlen, channels)` inputs as time-major `(T, batch, channels)` tensors in the
    compute dtype, and turns `delta` into the time step dt = softplus(delta + delta_bias) (or delta + delta_bias)."""

    def __init__(self, size, dtype, delta_bias, delta_softplus):
        self.size = size
        self.dtype = dtype
        self.delta_bias = None if delta_bias is None else delta_bias.to(dtype)
        self.delta_softplus = delta_softplus

    def slices(self, seqlen):
        return [slice(start, start + self.size) for start in range(0, seqlen, self.size)]

    def read_one(self, tensor, chunk):
        if tensor is None:
            return None
        chunk = tensor[:, chunk].transpose(0, 1)
        # A contiguous copy: on strided chunks (channel-major inputs) every later op is several times slower.
        return chunk.new_empty(chunk.shape, dtype=self.dtype).copy_(chunk)

    def read(self, chunk, u, delta, B, C, z):
        """Returns u, delta + delta_bias, dt, B, C, z (None if z is None) of the chunk."""
        u, delta, B, C, z = (self.read_one(tensor, chunk) for tensor in (u, delta, B, C, z))
        if self.delta_bias is not None:
            delta = delta + self.delta_bias
        dt = _softplus(delta) if self.delta_softplus else delta
        return u, delta, dt, B, C, z


def _softplus(x):
    """
    log(1 + exp(x)), to float rounding, about 4x faster than `F.softplus` on CPU (whose `log1p` is not vectorized).

    log1p(e) = log(u) - ((u - 1) - e) / u with u = 1 + e rounded: the second term corrects the rounding of u, and
    gives e where u rounds to 1.
    """
    small = torch.exp(-x.abs())
    one_plus = small + 1
    return torch.log(one_plus) - ((one_plus - 1) - small) / one_plus + x.clamp(min=0)


def _new_buffer(A_t, batch, length):
    """An uninitialized `(length, batch, d_state, d_inner)` buffer."""
    return A_t.new_empty(length, batch, *A_t.shape)


def _project(vectors, states):
    """Per-token products `vectors_t . states_t` over d_state: `(T, batch, d_state)`, `(T, batch, d_state, d_inner)`
    -> `(T, batch, d_inner)`."""
    return torch.matmul(vectors.unsqueeze(-2), states).squeeze(-2)


def _chunk_states_(states, decay, dt, u, A_t, B, initial_state):
    """
    Writes the states of one chunk of T tokens, `initial_state` then h_0 .. h_{T-1}, into `states[: T + 1]` and the
    decays exp(dt_t A) into `decay[:T]`; returns both views.

    dt, u: `(T, batch, d_inner)`; A_t: `(d_state, d_inner)`; B: `(T, batch, d_state)`;
    initial_state: `(batch, d_state, d_inner)`.
    """
    length = u.shape[0]
    states, decay = states[: length + 1], decay[:length]
    torch.mul(dt.unsqueeze(-2), A_t, out=decay).exp_()
    states[0] = initial_state
    torch.mul((dt * u).unsqueeze(-2), B.unsqueeze(-1), out=states[1:])
    # One fused multiply-add per token on a (batch, d_state, d_inner) slice that stays in cache: fewer passes over
    # memory than a log-depth parallel scan, whose extra work costs more than the Python loop here.
    for t in range(length):
        states[t + 1].addcmul_(decay[t], states[t])
    return states, decay
