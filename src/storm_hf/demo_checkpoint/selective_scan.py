"""Selective scan (the Mamba v1 SSM recurrence) of STORM's temporal projector.

`selective_scan` runs mamba_ssm's CUDA kernel where it applies and `selective_scan_chunked`, a pure PyTorch scan with
memory linear in the sequence length, everywhere else. Tensors follow mamba_ssm's `selective_scan_fn` layout.
"""

import torch
import torch.nn.functional as F


try:  # mamba_ssm loads its CUDA extension on import, which fails on machines without CUDA
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_ssm_selective_scan_fn
except (ImportError, OSError, RuntimeError):
    mamba_ssm_selective_scan_fn = None

is_mamba_ssm_available = mamba_ssm_selective_scan_fn is not None

# Decays (and products of decays) below this are set to 0 so that a product of two stays a normal float: arithmetic on
# subnormal floats is about 10x slower on CPUs. The dropped terms are 1e-18 times the state, far below float precision.
_DECAY_FLUSH = 1e-18


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
    Selective scan with mamba_ssm's CUDA kernel for CUDA inputs without `initial_state`, else `selective_scan_chunked`.

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
    if u.is_cuda and is_mamba_ssm_available and initial_state is None:
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
    chunk_size=64,
):
    """
    Pure PyTorch selective scan: a loop over chunks of `chunk_size` tokens, a log-depth parallel scan inside each.

    Computes in float32 (float64 for float64 inputs). Backward keeps only the inputs and one state per chunk and
    recomputes each chunk's states, so memory is linear in `seqlen` (no `(batch, d_inner, seqlen, d_state)` tensor).

    Args:
        u, delta, z: `(batch, d_inner, seqlen)`.
        A: `(d_inner, d_state)`, real and negative.
        B, C: `(batch, d_state, seqlen)`.
        D, delta_bias: `(d_inner,)`.
        initial_state: `(batch, d_inner, d_state)`, the state before the first token (zeros if `None`).
        chunk_size: tokens per chunk; each chunk materializes a few `(chunk_size, batch, d_inner, d_state)` buffers.

    Returns:
        y `(batch, d_inner, seqlen)` in `u`'s dtype, and with `return_last_state` the final state
        `(batch, d_inner, d_state)` in the compute dtype.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_in = u.to(dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if initial_state is not None:
        initial_state = initial_state.to(dtype)

    # The scan stores states as (d_state, d_inner), so that the innermost dimension is long enough to vectorize well.
    y, last_state = _SelectiveScanFunction.apply(
        delta,
        u_in,
        A.to(dtype).t().contiguous(),
        B.to(dtype),
        C.to(dtype),
        None if initial_state is None else initial_state.transpose(1, 2).contiguous(),
        chunk_size,
    )
    if D is not None:
        y = y + u_in * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, last_state.transpose(1, 2).contiguous()) if return_last_state else y


class _SelectiveScanFunction(torch.autograd.Function):
    """
    y_t = C_t . h_t with h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, with transposed A and states:
    delta, u `(batch, d_inner, seqlen)`; A_t `(d_state, d_inner)`; B, C `(batch, d_state, seqlen)`;
    initial_state `(batch, d_state, d_inner)` or `None`. Returns y `(batch, d_inner, seqlen)` and the last state
    `(batch, d_state, d_inner)`.

    Each chunk runs time-major, on `(chunk_size + 1, batch, d_state, d_inner)` buffers reused from chunk to chunk:
    allocating them per chunk costs more in page faults than the arithmetic.
    """

    @staticmethod
    def forward(ctx, delta, u, A_t, B, C, initial_state, chunk_size):
        batch, d_inner, seqlen = u.shape
        chunk_starts = range(0, seqlen, chunk_size)
        # chunk_states[i]: the state before chunk i; the last one is the final state
        chunk_states = u.new_empty(len(chunk_starts) + 1, batch, *A_t.shape)
        chunk_states[0] = 0 if initial_state is None else initial_state
        y = u.new_empty(batch, d_inner, seqlen)
        states, scan_decay = (_new_buffer(u, A_t, min(chunk_size, seqlen) + 1) for _ in range(2))
        for index, start in enumerate(chunk_starts):
            chunk = slice(start, start + chunk_size)
            delta_c, u_c, B_c, C_c = (_time_major(tensor, chunk) for tensor in (delta, u, B, C))
            states_c = _chunk_states_(states, scan_decay, delta_c, u_c, A_t, B_c, chunk_states[index])
            y[..., chunk] = torch.matmul(C_c.unsqueeze(-2), states_c[1:]).squeeze(-2).permute(1, 2, 0)
            chunk_states[index + 1] = states_c[-1]
        ctx.save_for_backward(delta, u, A_t, B, C, chunk_states[:-1])
        ctx.chunk_size = chunk_size
        return y, chunk_states[-1].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        delta, u, A_t, B, C, chunk_states = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        # gradient w.r.t. the state after the current chunk, carried from chunk to chunk
        grad_state = grad_last_state
        grad_delta, grad_u, grad_B, grad_C = (torch.empty_like(tensor) for tensor in (delta, u, B, C))
        grad_A_t = torch.zeros_like(A_t)
        buffer_length = min(chunk_size, u.shape[-1]) + 1
        states, scan_decay, decay, next_decay, grad_h, product = (
            _new_buffer(u, A_t, buffer_length) for _ in range(6)
        )
        for index in reversed(range(chunk_states.shape[0])):
            chunk = slice(index * chunk_size, (index + 1) * chunk_size)
            delta_c, u_c, B_c, C_c, grad_y_c = (_time_major(tensor, chunk) for tensor in (delta, u, B, C, grad_y))
            length = delta_c.shape[0]
            decay_c, next_decay_c, grad_h_c, product_c = (
                buffer[:length] for buffer in (decay, next_decay, grad_h, product)
            )
            _decay(delta_c, A_t, out=decay_c)
            states_c = _chunk_states_(states, scan_decay, delta_c, u_c, A_t, B_c, chunk_states[index], decay_c)
            grad_C_c = torch.mul(states_c[1:], grad_y_c.unsqueeze(-2), out=product_c).sum(-1)
            grad_C[..., chunk] = grad_C_c.permute(1, 2, 0)

            # Adjoint dh_t = C_t grad_y_t + decay_{t+1} dh_{t+1}: a reverse scan with the decays shifted by one
            torch.mul(C_c.unsqueeze(-1), grad_y_c.unsqueeze(-2), out=grad_h_c)
            grad_h_c[-1] += grad_state
            next_decay_c[:-1] = decay_c[1:]
            next_decay_c[-1] = 0  # would multiply the adjoint after the chunk, already in grad_h_c[-1]
            _scan_(next_decay_c, grad_h_c, reverse=True)
            grad_state = grad_h_c[0] * decay_c[0]

            # h_t = decay_t h_{t-1} + delta_t u_t B_t
            grad_delta_u = torch.matmul(B_c.unsqueeze(-2), grad_h_c).squeeze(-2)
            grad_B_c = torch.mul(grad_h_c, (delta_c * u_c).unsqueeze(-2), out=product_c).sum(-1)
            grad_B[..., chunk] = grad_B_c.permute(1, 2, 0)
            # d loss / d (delta_t A) = dh_t * h_{t-1} * decay_t, computed in place in the recomputed states
            grad_delta_A = states_c[:-1].mul_(grad_h_c).mul_(decay_c)
            grad_A_t += torch.mul(grad_delta_A, delta_c.unsqueeze(-2), out=product_c).sum((0, 1))
            grad_delta_c = grad_delta_u * u_c + torch.mul(grad_delta_A, A_t, out=product_c).sum(-2)
            grad_delta[..., chunk] = grad_delta_c.permute(1, 2, 0)
            grad_u[..., chunk] = (grad_delta_u * delta_c).permute(1, 2, 0)
        grad_initial_state = grad_state if ctx.needs_input_grad[5] else None
        return grad_delta, grad_u, grad_A_t, grad_B, grad_C, grad_initial_state, None


def _time_major(tensor, chunk):
    """The chunk of a `(batch, channels, seqlen)` tensor as a contiguous `(T, batch, channels)` tensor."""
    return tensor[..., chunk].permute(2, 0, 1).contiguous()


def _new_buffer(u, A_t, length):
    """An uninitialized `(length, batch, d_state, d_inner)` buffer."""
    return u.new_empty(length, u.shape[0], *A_t.shape)


def _chunk_states_(states, scan_decay, delta, u, A_t, B, initial_state, decay=None):
    """
    Writes the states of one chunk of T tokens, `initial_state` then h_0 .. h_{T-1}, into `states[: T + 1]` and
    returns that view. `scan_decay` is scratch space of the same shape.

    delta, u: `(T, batch, d_inner)`; A_t: `(d_state, d_inner)`; B: `(T, batch, d_state)`;
    initial_state: `(batch, d_state, d_inner)`; decay: `_decay(delta, A_t)` if already computed.
    """
    length = u.shape[0]
    states, scan_decay = states[: length + 1], scan_decay[: length + 1]
    scan_decay[0] = 0  # would multiply the state before `initial_state`
    if decay is None:
        _decay(delta, A_t, out=scan_decay[1:])
    else:
        scan_decay[1:] = decay
    states[0] = initial_state
    torch.mul((delta * u).unsqueeze(-2), B.unsqueeze(-1), out=states[1:])
    _scan_(scan_decay, states)
    return states


def _decay(delta, A_t, out):
    """
    exp(delta A) into `out`, with values below `_DECAY_FLUSH` set to 0.

    delta: `(T, batch, d_inner)`; A_t: `(d_state, d_inner)`; out: `(T, batch, d_state, d_inner)`.
    """
    torch.mul(delta.unsqueeze(-2), A_t, out=out).exp_()
    return F.threshold_(out, _DECAY_FLUSH, 0.0)


def _scan_(decay, values, reverse=False):
    """
    In-place linear recurrence along dim 0: values[t] += decay[t] * values[t - 1] (values[t + 1] if `reverse`).

    Odd/even recursion (Blelloch): neighbouring pairs are combined into one element, the half-length sequence is
    scanned recursively, then the other half is completed from its scanned neighbours. log2(T) levels, O(T) work, and
    only products of decays. `decay` is overwritten with partial products.
    """
    length = values.shape[0]
    if length < 2:
        return
    odd = length % 2
    if reverse:
        receivers, senders = slice(odd, length - 1, 2), slice(odd + 1, length, 2)
        rest, rest_sources = slice(1 - odd, length - 1, 2), slice(2 - odd, length, 2)
    else:
        receivers, senders = slice(1, length, 2), slice(0, length - 1, 2)
        rest, rest_sources = slice(2, length, 2), slice(1, length - 1, 2)
    values[receivers].addcmul_(decay[receivers], values[senders])
    F.threshold_(decay[receivers].mul_(decay[senders]), _DECAY_FLUSH, 0.0)
    _scan_(decay[receivers], values[receivers], reverse)
    values[rest].addcmul_(decay[rest], values[rest_sources])
