"""PyTorch STORM: SigLIP frames -> pixel-shuffle -> Linear -> bidirectional Mamba -> token compression -> LLM."""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, is_torchdynamo_compiling, torch_compilable_check
from transformers.utils.generic import can_return_tuple

from .configuration_storm import StormConfig
from .selective_scan import causal_conv1d_applies, causal_conv1d_fn, mamba_ssm_scan_applies, selective_scan


ProgressCallback = Callable[[int, int], None]
"""`progress_callback(done_frames, total_frames)`: called after each vision micro-batch with the frames encoded so
far."""


@dataclass
class StormModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_image_tokens, hidden_size)`, *optional*):
        Compressed image tokens that replaced the image placeholders.
    video_hidden_states (`torch.FloatTensor` of shape `(num_video_tokens, hidden_size)`, *optional*):
        Compressed video tokens that replaced the video placeholders.
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        `get_image_features`' output for the images of this call: `pooler_output` (one tensor of compressed tokens
        per image) and, when asked for, the vision encoder's `hidden_states` / `attentions`; `last_hidden_state` is
        None (the features of all frames are not kept). None without images.
    video_outputs (`BaseModelOutputWithPooling`, *optional*):
        The same for the videos, from `get_video_features`.
    """

    image_hidden_states: torch.FloatTensor | None = None
    video_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    video_outputs: BaseModelOutputWithPooling | None = None


# transformers 5.24 renames the cache argument and output field `past_key_values` to `cache`.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class StormCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
        Next-token prediction loss.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        Prediction scores of the language modeling head.
    image_hidden_states (`torch.FloatTensor` of shape `(num_image_tokens, hidden_size)`, *optional*):
        Compressed image tokens that replaced the image placeholders.
    video_hidden_states (`torch.FloatTensor` of shape `(num_video_tokens, hidden_size)`, *optional*):
        Compressed video tokens that replaced the video placeholders.
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        `get_image_features`' output for the images of this call: `pooler_output` (one tensor of compressed tokens
        per image) and, when asked for, the vision encoder's `hidden_states` / `attentions`; `last_hidden_state` is
        None (the features of all frames are not kept). None without images.
    video_outputs (`BaseModelOutputWithPooling`, *optional*):
        The same for the videos, from `get_video_features`.
    """

    image_hidden_states: torch.FloatTensor | None = None
    video_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    video_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class StormMambaState:
    """State of one causal Mamba mixer at the end of a call, to continue the scan in the next call (streaming).

    conv_state: `(batch_size, intermediate_size, conv_kernel - 1)`, the last inputs of the causal convolution.
    ssm_state: `(batch_size, intermediate_size, state_size)`, the selective-scan state.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


def reverse_sequences(hidden_states: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverses each sequence of a right-padded batch in time, leaving the padding where it is.

    hidden_states: `(batch_size, sequence_length, channels)`; lengths: `(batch_size,)` real lengths, or None (no
    padding).
    """
    if lengths is None:
        return hidden_states.flip(1)
    positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
    source = lengths[:, None] - 1 - positions
    source = torch.where(source >= 0, source, positions)
    return hidden_states.gather(1, source[:, :, None].expand_as(hidden_states))


def _needs_grad(inputs: torch.Tensor, module: nn.Module) -> bool:
    """Whether autograd records `module(inputs)`: the memory-bounded inference paths run only where it does not."""
    return torch.is_grad_enabled() and (
        inputs.requires_grad or any(parameter.requires_grad for parameter in module.parameters())
    )


class StormPixelShuffle(nn.Module):
    """Space-to-depth: each `ratio`x`ratio` window of the patch grid becomes one token with `ratio**2` times the width.

    Channels of a window are concatenated in raster order (top-left, top-right, ..., bottom-right). A grid side that
    `ratio` does not divide is zero-padded at the bottom/right first, as in NVILA.
    """

    def __init__(self, ratio: int):
        super().__init__()
        self.ratio = ratio

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: `(num_frames, height, width, channels)` ->
        `(num_frames, ceil(height/r), ceil(width/r), r*r*channels)`."""
        num_frames, height, width, channels = features.shape
        r = self.ratio
        features = F.pad(features, (0, 0, 0, -width % r, 0, -height % r))
        height, width = features.shape[1] // r, features.shape[2] // r
        features = features.reshape(num_frames, height, r, width, r, channels).permute(0, 1, 3, 2, 4, 5)
        return features.reshape(num_frames, height, width, r * r * channels)


NO_WEIGHT_DECAY_PARAMETERS = ("A_log", "D", "A_b_log", "D_b")


class StormMambaScanWeights(NamedTuple):
    """The weights of one scan direction of `StormMambaMixer`, named as in mamba-ssm's `Mamba`."""

    conv1d: nn.Conv1d
    x_proj: nn.Linear
    dt_proj: nn.Linear
    A_log: nn.Parameter
    D: nn.Parameter


class StormMambaMixer(nn.Module):
    """Mamba v1 selective-scan mixer, uni- or bidirectional.

    Parameters are named as in mamba-ssm's `Mamba` (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`, `out_proj`);
    the bidirectional variant follows Vision Mamba: `in_proj`/`out_proj` are shared, the reversed scan has its own
    `conv1d_b`, `x_proj_b`, `dt_proj_b`, `A_b_log`, `D_b` (all None in a causal mixer), and the two directions' gated
    outputs are summed.

    The whole sequence is scanned at once where a gradient is needed, where mamba-ssm's CUDA scan runs
    (`selective_scan.mamba_ssm_scan_applies`: CUDA, mamba-ssm installed, no streaming state) or where it is at most
    `inference_chunk_length` positions long (None: always). A longer sequence is scanned at inference
    `inference_chunk_length` positions at a time, each direction carrying its state from chunk to chunk: same output,
    but memory is the input, the output and one chunk's intermediates, at the cost of running `in_proj` and `out_proj`
    once per direction instead of once (see `StormConfig.mamba_inference_chunk_length`).
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        conv_kernel: int = 4,
        expand: int = 2,
        time_step_rank: int | None = None,
        bidirectional: bool = True,
        inference_chunk_length: int | None = None,
    ):
        super().__init__()
        self.inference_chunk_length = inference_chunk_length
        self.intermediate_size = expand * hidden_size
        self.state_size = state_size
        self.conv_kernel = conv_kernel
        self.time_step_rank = time_step_rank or math.ceil(hidden_size / 16)
        self.bidirectional = bidirectional

        self.in_proj = nn.Linear(hidden_size, 2 * self.intermediate_size, bias=False)
        self.out_proj = nn.Linear(self.intermediate_size, hidden_size, bias=False)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._make_scan_weights()
        if bidirectional:
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = self._make_scan_weights()
        else:
            self.conv1d_b = self.x_proj_b = self.dt_proj_b = self.A_b_log = self.D_b = None

    def __setattr__(self, name: str, value):
        # As in mamba-ssm, `A_log`, `D` (and `A_b_log`, `D_b`) carry `_no_weight_decay = True` for optimizers; marked
        # on every assignment, since `from_pretrained` replaces the parameters with the loaded ones.
        if name in NO_WEIGHT_DECAY_PARAMETERS and isinstance(value, nn.Parameter):
            value._no_weight_decay = True
        super().__setattr__(name, value)

    def _make_scan_weights(self) -> StormMambaScanWeights:
        return StormMambaScanWeights(
            conv1d=nn.Conv1d(
                self.intermediate_size,
                self.intermediate_size,
                self.conv_kernel,
                groups=self.intermediate_size,
                padding=0,
            ),
            x_proj=nn.Linear(self.intermediate_size, self.time_step_rank + 2 * self.state_size, bias=False),
            dt_proj=nn.Linear(self.time_step_rank, self.intermediate_size, bias=True),
            A_log=nn.Parameter(torch.zeros(self.intermediate_size, self.state_size)),
            D=nn.Parameter(torch.ones(self.intermediate_size)),
        )

    @property
    def forward_scan_weights(self) -> StormMambaScanWeights:
        return StormMambaScanWeights(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)

    @property
    def reversed_scan_weights(self) -> StormMambaScanWeights | None:
        """The reversed scan's weights; None in a causal mixer."""
        if not self.bidirectional:
            return None
        return StormMambaScanWeights(self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)

    def forward(
        self,
        hidden_states: torch.Tensor,
        lengths: torch.Tensor | None = None,
        state: StormMambaState | None = None,
        norm: nn.Module | None = None,
    ) -> tuple[torch.Tensor, StormMambaState | None]:
        """
        hidden_states: `(batch_size, sequence_length, hidden_size)`, right-padded; lengths: `(batch_size,)` real lengths
        (None: no padding). Padding never reaches a real token: the forward scan stops before it and the backward scan
        starts at each sequence's own last token. `state` (causal mixer only) continues a previous call; the returned
        state ends at the last position, so it is only returned for unpadded input. `norm` (the layer's pre-norm, a
        per-position module) is applied before `in_proj`: at inference chunk by chunk, so that the normalized sequence
        never exists whole.
        Returns the output `(batch_size, sequence_length, hidden_size)` (unspecified at padding positions) and the
        state (None when bidirectional).
        """
        if self.bidirectional and state is not None:
            raise ValueError(
                "A bidirectional Mamba scan sees the whole sequence at once; "
                "streaming `state` needs `mamba_bidirectional=False`."
            )
        norm = norm if norm is not None else nn.Identity()
        if (
            self.inference_chunk_length is None
            or hidden_states.shape[1] <= self.inference_chunk_length
            or _needs_grad(hidden_states, self)
            or mamba_ssm_scan_applies(hidden_states, None if state is None else state.ssm_state)
        ):
            output, state = self._forward_whole(norm(hidden_states), lengths, state)
        else:
            output, state = self._forward_in_chunks(hidden_states, lengths, state, norm)
        if self.bidirectional or (lengths is not None and bool((lengths < hidden_states.shape[1]).any())):
            state = None  # the scan ran into padding: its final state is no sequence's state
        return output, state

    def _forward_whole(
        self, hidden_states: torch.Tensor, lengths: torch.Tensor | None, state: StormMambaState | None
    ) -> tuple[torch.Tensor, StormMambaState | None]:
        """Both directions over the whole (normalized) sequence; returns the output and the forward scan's final state
        (causal mixer only: asking for it moves a scan that needs a gradient off mamba-ssm's kernel)."""
        # Everything stays (batch, sequence, channels), the layout of the Linear layers: no transposed copies.
        projected = self.in_proj(hidden_states)
        output, state = self._scan(projected, self.forward_scan_weights, state, return_state=not self.bidirectional)
        if self.bidirectional:
            projected = reverse_sequences(projected, lengths)  # the forward-order copy is freed at inference
            reversed_output, _ = self._scan(projected, self.reversed_scan_weights, None, return_state=False)
            output += reverse_sequences(reversed_output, lengths)
        return self.out_proj(output), state

    def _forward_in_chunks(
        self,
        hidden_states: torch.Tensor,
        lengths: torch.Tensor | None,
        state: StormMambaState | None,
        norm: nn.Module,
    ) -> tuple[torch.Tensor, StormMambaState | None]:
        """Both directions at inference, `inference_chunk_length` positions at a time, each carrying its conv and SSM
        state from chunk to chunk; returns the output and the forward scan's final state.

        Each chunk's `out_proj` output is written into the preallocated output (forward scan) or added to it (reversed
        scan; `out_proj` is linear, so this is `out_proj` of the summed gated outputs): only the input, the output and
        one chunk's intermediates exist at a time. The reversed scan reads each sequence's chunks last to first,
        starting at the sequence's own last token (a gather of one chunk), so right padding is scanned after the real
        tokens and never before them.
        """
        batch_size, sequence_length, hidden_size = hidden_states.shape
        chunk_tokens = self.inference_chunk_length
        output = hidden_states.new_empty(hidden_states.shape)
        for start in range(0, sequence_length, chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            projected = self.in_proj(norm(hidden_states[:, chunk]))
            gated, state = self._scan(projected, self.forward_scan_weights, state, return_state=True)
            output[:, chunk] = self.out_proj(gated)
        if not self.bidirectional:
            return output, state
        if lengths is None:
            lengths = torch.full((batch_size,), sequence_length, device=hidden_states.device)
        offsets = torch.arange(chunk_tokens, device=hidden_states.device)
        reversed_state = None
        for start in range(0, sequence_length, chunk_tokens):
            # the chunk's positions in reversed time: start, start + 1, ... counted back from each sequence's last token
            positions = lengths[:, None] - 1 - (start + offsets[: min(chunk_tokens, sequence_length - start)])
            is_token = positions >= 0  # False: before the sequence's first token (only in right-padded batches)
            index = positions.clamp(min=0)[:, :, None].expand(-1, -1, hidden_size)
            projected = self.in_proj(norm(hidden_states.gather(1, index)))
            gated, reversed_state = self._scan(projected, self.reversed_scan_weights, reversed_state, return_state=True)
            output.scatter_add_(1, index, self.out_proj(gated).masked_fill_(~is_token[:, :, None], 0))
        return output, state

    def _scan(
        self,
        projected: torch.Tensor,
        weights: StormMambaScanWeights,
        state: StormMambaState | None,
        return_state: bool,
    ) -> tuple[torch.Tensor, StormMambaState | None]:
        """One scan direction with `weights`: projected `(batch_size, sequence_length, 2 * intermediate_size)` (x and
        gate) -> `(batch_size, sequence_length, intermediate_size)` and, with `return_state`, the final state (asking
        for it costs nothing on the CPU; on CUDA, a state that needs a gradient moves the scan off mamba-ssm's
        kernel)."""
        conv1d, x_proj, dt_proj, A_log, D = weights
        x, gate = projected.chunk(2, dim=-1)

        if state is None:
            conv_state = x.new_zeros(x.shape[0], self.conv_kernel - 1, x.shape[2])
        else:
            conv_state = state.conv_state.transpose(1, 2)
        # the convolution's last `conv_kernel - 1` inputs (the next call's conv state), without copying all of x
        keep = self.conv_kernel - 1
        tail = torch.cat([conv_state, x[:, max(x.shape[1] - keep, 0) :]], dim=1)
        new_conv_state = tail[:, tail.shape[1] - keep :]
        if causal_conv1d_applies(x, self.conv_kernel, None if state is None else state.conv_state):
            # the kernel's standard (batch, channels, sequence) layout; a transposed copy is cheap on the GPU
            x = causal_conv1d_fn(
                x.transpose(1, 2).contiguous(), conv1d.weight.squeeze(1), conv1d.bias, activation="silu"
            ).transpose(1, 2)
        else:
            # The depthwise convolution as a 1-row conv2d on channels-last memory: oneDNN reads and writes
            # (batch, sequence, channels) directly, where conv1d would need two transposed copies. Neither its padded
            # input nor its output is kept in a variable: they would live on through the scan, the memory peak.
            x = F.silu(
                F.conv2d(
                    torch.cat([conv_state, x], dim=1).unsqueeze(1).permute(0, 3, 1, 2),
                    conv1d.weight.unsqueeze(2),
                    conv1d.bias,
                    groups=self.intermediate_size,
                )
                .permute(0, 2, 3, 1)
                .squeeze(1)
            )

        time_step, B, C = torch.split(x_proj(x), [self.time_step_rank, self.state_size, self.state_size], dim=-1)
        scanned = selective_scan(
            x.transpose(1, 2),
            (time_step @ dt_proj.weight.T).transpose(1, 2),
            -torch.exp(A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D.float(),
            z=gate.transpose(1, 2),
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            initial_state=state.ssm_state if state is not None else None,
            return_last_state=return_state,
        )
        if not return_state:
            return scanned.transpose(1, 2), None
        output, ssm_state = scanned
        return output.transpose(1, 2), StormMambaState(new_conv_state.transpose(1, 2), ssm_state)


class StormMambaLayer(GradientCheckpointingLayer):
    """Pre-norm residual Mamba layer (paper eq. 3-5): X_l = X_{l-1} + MambaMixer(LayerNorm(X_{l-1}))."""

    def __init__(self, config: StormConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        self.mixer = StormMambaMixer(
            hidden_size,
            state_size=config.mamba_state_size,
            conv_kernel=config.mamba_conv_kernel,
            expand=config.mamba_expand,
            time_step_rank=config.mamba_time_step_rank,
            bidirectional=config.mamba_bidirectional,
            inference_chunk_length=config.mamba_inference_chunk_length,
        )

    def forward(
        self, hidden_states: torch.Tensor, lengths: torch.Tensor | None = None, state: StormMambaState | None = None
    ) -> tuple[torch.Tensor, StormMambaState | None]:
        """hidden_states: `(batch_size, sequence_length, hidden_size)` -> same shape, and the mixer's state."""
        mixed, state = self.mixer(hidden_states, lengths, state, norm=self.norm)
        return mixed.add_(hidden_states), state  # in place: no backward reads the mixer's output


class StormTemporalProjector(nn.Module):
    """pixel-shuffle -> Linear -> Mamba stack: gives every visual token the context of the whole video.

    The tokens of all frames of a video form ONE sequence (raster order inside a frame, frames in time order); videos
    are scanned side by side as a right-padded batch, so no scan ever crosses from one video into another.
    """

    def __init__(self, config: StormConfig):
        super().__init__()
        self.pixel_shuffle = StormPixelShuffle(config.downsample_ratio)
        self.linear = nn.Linear(
            config.downsample_ratio**2 * config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.layers = nn.ModuleList([StormMambaLayer(config) for _ in range(config.mamba_num_layers)])

    def project_frames(self, frame_features: torch.Tensor) -> torch.Tensor:
        """pixel-shuffle -> Linear, each frame on its own (so frames can be projected in micro-batches):
        `(total_frames, grid_height, grid_width, vision_hidden_size)` -> `(total_frames, grid_height/r, grid_width/r,
        hidden_size)`. Without a gradient, frame by frame into one preallocated output, so the pixel-shuffled copy of
        the features (as large as they are) never exists whole."""
        if _needs_grad(frame_features, self.linear) or frame_features.shape[0] == 0:
            return self.linear(self.pixel_shuffle(frame_features))
        tokens = None
        for index, frame in enumerate(frame_features.split(1)):
            merged = self.linear(self.pixel_shuffle(frame))
            if tokens is None:
                tokens = merged.new_empty(frame_features.shape[0], *merged.shape[1:])
            tokens[index] = merged[0]
        return tokens

    def forward(
        self,
        frame_features: torch.Tensor | None,
        num_frames: list[int],
        states: list[StormMambaState] | None = None,
        frame_tokens: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], list[StormMambaState | None]]:
        """
        frame_features: `(total_frames, grid_height, grid_width, vision_hidden_size)`, the frames of all videos in
        order; or None with `frame_tokens`, the same frames already through `project_frames`. num_frames: frames of
        each video. `states`: per-layer states of a previous call (causal projector, streaming).
        Returns one `(num_frames_i, grid_height/r, grid_width/r, hidden_size)` tensor per video and per-layer states.
        """
        if (frame_features is None) == (frame_tokens is None):
            raise ValueError("Pass exactly one of `frame_features` or `frame_tokens` (projected frame features).")
        tokens = self.project_frames(frame_features) if frame_tokens is None else frame_tokens
        _, height, width, hidden_size = tokens.shape
        # Equal lengths need no padding: a plain flip is then cheaper than the per-sequence gather.
        lengths = (
            None
            if len(set(num_frames)) == 1
            else torch.tensor([n * height * width for n in num_frames], device=tokens.device)
        )
        if len(num_frames) == 1:  # one video (a long one, typically): a view, no padded copy
            hidden_states = tokens.reshape(1, -1, hidden_size)
        else:
            hidden_states = nn.utils.rnn.pad_sequence(
                [video.reshape(-1, hidden_size) for video in tokens.split(num_frames)], batch_first=True
            )
        del tokens  # each layer's output replaces its input: the first layer's input is not kept until the end
        states = states if states is not None else [None] * len(self.layers)
        new_states = []
        for layer, state in zip(self.layers, states):
            hidden_states, state = layer(hidden_states, lengths=lengths, state=state)
            new_states.append(state)
        videos = tuple(
            sequence[: n * height * width].reshape(n, height, width, hidden_size)
            for sequence, n in zip(hidden_states, num_frames)
        )
        return videos, new_states


def temporal_pool(tokens: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Averages each group of `pool_size` consecutive frames; a shorter last group is averaged over its own frames.

    tokens: `(num_frames, height, width, hidden_size)` -> `(ceil(num_frames / pool_size), height, width, hidden_size)`.
    """
    num_frames = tokens.shape[0]
    num_groups = math.ceil(num_frames / pool_size)
    group_of_frame = torch.arange(num_frames, device=tokens.device) // pool_size
    summed = tokens.new_zeros(num_groups, *tokens.shape[1:]).index_add_(0, group_of_frame, tokens)
    counts = torch.bincount(group_of_frame, minlength=num_groups).to(tokens.dtype)
    return summed / counts[:, None, None, None]


def spatial_pool(tokens: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Averages `pool_size`x`pool_size` windows inside each frame.

    tokens: `(num_frames, height, width, hidden_size)` ->
    `(num_frames, height/pool_size, width/pool_size, hidden_size)`.
    """
    if pool_size == 1:
        return tokens
    pooled = F.avg_pool2d(tokens.permute(0, 3, 1, 2), kernel_size=pool_size)
    return pooled.permute(0, 2, 3, 1)


def temporal_sample(tokens: torch.Tensor, stride: int) -> torch.Tensor:
    """Keeps every `stride`-th frame, starting with the first.

    tokens: `(num_frames, ...)` -> `(ceil(num_frames / stride), ...)`.
    """
    return tokens[::stride]


class StormTokenCompressor(nn.Module):
    """Temporal pooling -> spatial pooling -> test-time temporal sampling of one video's projected tokens."""

    def __init__(self, config: StormConfig):
        super().__init__()
        self.temporal_pool_size = config.temporal_pool_size
        self.spatial_pool_size = config.spatial_pool_size

    def forward(self, tokens: torch.Tensor, temporal_sampling_stride: int = 1) -> torch.Tensor:
        """tokens: `(num_frames, height, width, hidden_size)` -> `(num_llm_tokens, hidden_size)`."""
        tokens = temporal_pool(tokens, self.temporal_pool_size)
        tokens = spatial_pool(tokens, self.spatial_pool_size)
        tokens = temporal_sample(tokens, temporal_sampling_stride)
        return tokens.reshape(-1, tokens.shape[-1])


class StormPreTrainedModel(PreTrainedModel):
    config: StormConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    # Blocks FSDP / device maps must keep whole. `post_init` adds those of the sub-models built (vision encoder layers,
    # the language model's decoder layers), so a STORM over any language model lists that model's own.
    _no_split_modules = ["StormMambaLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # decode steps (no pixels) compile with fullgraph=True: see the tests

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: transformers initialises STORM's missing weights as it does its own models'.

        transformers counts every class outside its package as custom code and then, not knowing whether its
        `_init_weights` overwrites loaded weights, skips each module whose own parameters are all loaded. That also
        skips modules without parameters of their own, whose `_init_weights` initialises their children (SigLIP's
        attention and MLP): weights `from_pretrained` creates (missing keys) would get the generic Linear init instead
        of SigLIP's. STORM's `_init_weights` writes only through `transformers.initialization`, which leaves loaded
        weights alone, so the guard is not needed.
        """
        return False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, StormMambaMixer):
            self._init_mamba_mixer(module)

    def _init_mamba_mixer(self, mixer: StormMambaMixer, time_step_min: float = 1e-3, time_step_max: float = 0.1):
        """Mamba's initialisation: S4D-real A, D = 1, time steps log-uniform in [time_step_min, time_step_max]."""
        init.kaiming_uniform_(mixer.in_proj.weight, a=math.sqrt(5))
        init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
        A = torch.arange(1, mixer.state_size + 1, dtype=torch.float32).expand(mixer.intermediate_size, -1)
        for weights in (mixer.forward_scan_weights, mixer.reversed_scan_weights):
            if weights is None:
                continue
            init.kaiming_uniform_(weights.conv1d.weight, a=math.sqrt(5))
            init.zeros_(weights.conv1d.bias)
            init.kaiming_uniform_(weights.x_proj.weight, a=math.sqrt(5))
            dt_std = mixer.time_step_rank**-0.5
            init.uniform_(weights.dt_proj.weight, -dt_std, dt_std)
            time_step = torch.exp(
                torch.rand(mixer.intermediate_size) * (math.log(time_step_max) - math.log(time_step_min))
                + math.log(time_step_min)
            ).clamp(min=1e-4)
            init.copy_(weights.dt_proj.bias, time_step + torch.log(-torch.expm1(-time_step)))  # inverse softplus
            init.copy_(weights.A_log, torch.log(A))
            init.ones_(weights.D)


def _check_visual_shape(name: str, pixels: torch.Tensor, expected: str):
    if pixels.dim() != 5:
        raise ValueError(
            f"`{name}` must be batch-major with shape {expected}, got shape {tuple(pixels.shape)}; StormProcessor "
            "builds it (add a batch dimension with `.unsqueeze(0)` for a single sample)."
        )


def _select_padded(padded: torch.Tensor, counts: list[int], name: str) -> torch.Tensor:
    """Rows `[b, :counts[b]]` of a batch-major padded tensor, concatenated: `(batch, max, ...)` -> `(sum(counts), ...)`.

    Without padding (every count is `max`, e.g. one video) the result is a view: the frames are not copied. The checks
    read the counts and, of each padded sample, only the first and the last padding entry (zeros after the counted
    frames; a batch padded on the left or shifted has frames there): no pass over the padding.
    """
    max_count = padded.shape[1]
    torch_compilable_check(
        all(0 <= count <= max_count for count in counts),
        lambda: (
            f"The per-sample counts {counts} are negative or exceed the {max_count} entries per sample of `{name}`."
        ),
    )
    if all(count == max_count for count in counts):
        return padded.flatten(0, 1)
    padding_edges = torch.stack(
        [padded[b, index] for b, count in enumerate(counts) if count < max_count for index in (count, -1)]
    )
    torch_compilable_check(
        ~padding_edges.any(),
        f"`{name}` has non-zero entries after the counted ones: its padding must be zeros at the END of each "
        "sample. A batch padded on the left (e.g. by a pipeline whose tokenizer pads left) would pair text with "
        "the wrong frames; use StormProcessor or the `video-text-to-text` pipeline, which pad on the right.",
    )
    return torch.cat([sample[:count] for sample, count in zip(padded, counts)])


def build_vision_encoder(config: StormConfig) -> PreTrainedModel:
    """The vision tower of `config.vision_config` (that very object: settings changed on it later, such as the
    attention implementation, reach the tower), cut after `config.vision_feature_layer`.

    The encoder layers after the feature layer are removed, SigLIP's `post_layernorm` becomes an identity and its
    pooling head is removed, so the tower's `last_hidden_state` is the feature layer's output and every parameter of
    the tower gets a gradient. `config.vision_config` keeps describing the whole tower (`num_hidden_layers`), as the
    checkpoints of the full SigLIP do; loading one reports the removed parts' keys.
    """
    tower = AutoModel.from_config(config.vision_config)
    if not hasattr(tower, "post_layernorm"):
        raise ValueError(
            f"STORM's vision tower must be a SigLIP vision model (`siglip_vision_model`), got a "
            f"'{config.vision_config.model_type}' model without `post_layernorm`."
        )
    del tower.encoder.layers[config.num_vision_layers_used :]
    tower.post_layernorm = nn.Identity()
    if tower.use_head:
        del tower.head
        tower.use_head = False
    return tower


def _join_frames(chunks: Iterable[torch.Tensor], num_frames: int) -> torch.Tensor:
    """Per-micro-batch tensors `(frames_i, ...)` joined over the frames: `(num_frames, ...)`.

    Without autograd each chunk is written into one buffer as it arrives, so no list of chunks lives next to their
    concatenation; with autograd (which keeps every chunk for the backward anyway) they are concatenated.
    """
    if torch.is_grad_enabled():
        return torch.cat(list(chunks))
    joined, start = None, 0
    for chunk in chunks:
        if joined is None:
            joined = chunk.new_empty(num_frames, *chunk.shape[1:])
        joined[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    return joined


RECORDED_VISION_OUTPUTS = ("hidden_states", "attentions")
VisionRecords = dict[str, tuple[torch.Tensor, ...] | None]
"""One vision-tower call's per-layer outputs by name (`RECORDED_VISION_OUTPUTS`), None where not requested."""


def _join_records(records: list[VisionRecords]) -> VisionRecords:
    """Per-layer `hidden_states` and `attentions` recorded on consecutive frame micro-batches, joined over the frames
    (None where not recorded, also for single layers left out by a layer selection)."""
    joined = dict.fromkeys(RECORDED_VISION_OUTPUTS)
    for key in joined:
        if records[0][key] is not None:
            joined[key] = tuple(
                None if layer[0] is None else torch.cat(layer) for layer in zip(*(record[key] for record in records))
            )
    return joined


class StormModel(StormPreTrainedModel):
    """Vision tower + temporal projector + token compressor + language model (no LM head)."""

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.vision_tower = build_vision_encoder(config)
        self.temporal_projector = StormTemporalProjector(config)
        self.token_compressor = StormTokenCompressor(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def encode_frames(
        self,
        frames: torch.Tensor,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Runs the vision tower on `frames` `(num_frames, 3, height, width)` in micro-batches of `vision_batch_size`
        frames (default `config.vision_batch_size`), calling `progress_callback(done_frames, num_frames)` after each.

        Returns `last_hidden_state`: the feature layer's output `(num_frames, num_patches, vision_hidden_size)`, equal
        to running all frames at once; with `output_hidden_states` / `output_attentions` (in `kwargs`), the built
        layers' hidden states and attentions over all frames.
        """
        features, records = self._encode_in_micro_batches(frames, vision_batch_size, progress_callback, **kwargs)
        return BaseModelOutputWithPooling(last_hidden_state=features, **_join_records(records))

    def _encode_in_micro_batches(
        self,
        frames: torch.Tensor,
        vision_batch_size: int | None,
        progress_callback: ProgressCallback | None,
        project_frames: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, list[VisionRecords]]:
        """The vision tower on `frames` `(num_frames, 3, height, width)`, `vision_batch_size` frames per call (see
        `encode_frames`).

        Returns the feature layer's output of all frames `(num_frames, num_patches, vision_hidden_size)`, or with
        `project_frames` the projector's pixel-shuffle and Linear applied to each micro-batch as soon as the tower gives
        it, `(num_frames, grid_height/r, grid_width/r, hidden_size)` (then the features of all frames never exist at
        once); and each micro-batch's hidden states and attentions (None unless requested).
        """
        batch_size = self.config.vision_batch_size if vision_batch_size is None else vision_batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`vision_batch_size` must be a positive integer (frames per vision call), got {batch_size!r}."
            )
        num_frames = frames.shape[0]
        records = []

        def micro_batches():
            for start in range(0, num_frames, batch_size):
                output = self.vision_tower(frames[start : start + batch_size], return_dict=True, **kwargs)
                records.append({key: output.get(key) for key in RECORDED_VISION_OUTPUTS})  # not the features
                features = output.last_hidden_state
                del output
                if project_frames:
                    features = self.temporal_projector.project_frames(self._patch_grid(features, frames))
                yield features
                if progress_callback is not None:
                    progress_callback(min(start + batch_size, num_frames), num_frames)

        return _join_frames(micro_batches(), num_frames), records

    def get_frame_features(
        self,
        frames: torch.Tensor,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """The feature layer's patch grid of each frame, computed `vision_batch_size` frames at a time (see
        `encode_frames`): frames `(num_frames, 3, height, width)` -> `(num_frames, grid_height, grid_width,
        vision_hidden_size)`."""
        features = self.encode_frames(frames, vision_batch_size, progress_callback).last_hidden_state
        return self._patch_grid(features, frames)

    def _patch_grid(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """`(num_frames, num_patches, channels)` -> `(num_frames, grid_height, grid_width, channels)`."""
        return features.unflatten(1, (frames.shape[-2] // self.config.vision_config.patch_size, -1))

    def _encode(
        self,
        frames: torch.Tensor,
        num_frames: list[int],
        strides: list[int],
        vision_batch_size: int | None,
        progress_callback: ProgressCallback | None,
        return_frame_features: bool,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encodes, projects and compresses videos whose frames are concatenated in `frames` `(total_frames, 3, H, W)`:
        the vision output (see `get_video_features`) with the compressed tokens of each video as `pooler_output`."""
        if self.training and any(stride > 1 for stride in strides):
            raise ValueError(
                f"Temporal sampling (stride {max(strides)}) is a test-time operation: call `model.eval()` or send "
                "`temporal_sampling_stride=1` while training."
            )
        if return_frame_features or torch.is_grad_enabled():  # (autograd keeps every frame's features anyway)
            vision_output = self.encode_frames(frames, vision_batch_size, progress_callback, **kwargs)
            grid = self._patch_grid(vision_output.last_hidden_state, frames)
            projected, _ = self.temporal_projector(grid, num_frames)
            if not return_frame_features:
                vision_output.last_hidden_state = None
        else:  # inference: only projector-width tokens are kept for all frames
            tokens, records = self._encode_in_micro_batches(
                frames, vision_batch_size, progress_callback, project_frames=True, **kwargs
            )
            vision_output = BaseModelOutputWithPooling(**_join_records(records))
            projected, _ = self.temporal_projector(None, num_frames, frame_tokens=tokens)
        vision_output.pooler_output = tuple(
            self.token_compressor(video, stride) for video, stride in zip(projected, strides)
        )
        return vision_output

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_num_frames: torch.LongTensor | None = None,
        temporal_sampling_stride: torch.LongTensor | int | None = None,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        return_frame_features: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, max_total_frames, 3, height, width)`):
            The frames of each sample's videos, concatenated in prompt order and zero-padded at the end.
        video_num_frames (`torch.LongTensor` of shape `(batch_size, max_videos_per_sample)`, *optional*):
            Frames of each video of each sample, 0 for an empty slot. None: one video of `max_total_frames` frames
            per sample.
        temporal_sampling_stride (`torch.LongTensor` of shape `(batch_size,)` or `int`, *optional*):
            Test-time temporal sampling stride per sample (the processor sends the one it counted placeholders with).
            Defaults to `config.temporal_sampling_stride`.
        vision_batch_size (`int`, *optional*):
            Frames per vision-tower call (default `config.vision_batch_size`); any value gives the same features.
        progress_callback (`Callable[[int, int], None]`, *optional*):
            Called as `progress_callback(done_frames, total_frames)` after each vision micro-batch.
        return_frame_features (`bool`, defaults to `True`):
            Return the vision features as `last_hidden_state`. `False` (what `forward` and `generate` use): it is None,
            and at inference (no gradient) each vision micro-batch goes through the projector's pixel-shuffle and
            Linear as soon as the tower gives it, so only projector-width tokens are kept for all frames, never the
            features of all frames (a long video's largest tensor); the tokens are the same.

        Returns `last_hidden_state`: the vision encoder's feature-layer output `(total_frames, num_patches,
        vision_hidden_size)` of all videos' frames (and `hidden_states` / `attentions` when requested), and
        `pooler_output`: one `(num_llm_tokens, hidden_size)` tensor per video (projected and compressed), in sample
        then prompt order.
        """
        _check_visual_shape(
            "pixel_values_videos", pixel_values_videos, "(batch_size, max_total_frames, 3, height, width)"
        )
        batch_size, max_frames = pixel_values_videos.shape[:2]
        # the counts and strides shape everything below: read once to the host, all checks then use them
        frames_per_video = [[max_frames]] * batch_size if video_num_frames is None else video_num_frames.tolist()
        if temporal_sampling_stride is None:
            temporal_sampling_stride = self.config.temporal_sampling_stride
        strides = torch.as_tensor(temporal_sampling_stride).reshape(-1).tolist()
        torch_compilable_check(
            len(strides) in (1, batch_size) and all(stride >= 1 for stride in strides),
            lambda: (
                f"`temporal_sampling_stride` must be one integer >= 1 or one per sample ({batch_size}), got {strides}."
            ),
        )
        strides = strides * batch_size if len(strides) == 1 else strides
        frames = _select_padded(pixel_values_videos, [sum(row) for row in frames_per_video], "pixel_values_videos")
        num_frames = [count for row in frames_per_video for count in row if count > 0]
        strides = [stride for row, stride in zip(frames_per_video, strides) for count in row if count > 0]
        return self._encode(
            frames, num_frames, strides, vision_batch_size, progress_callback, return_frame_features, **kwargs
        )

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        num_images: torch.LongTensor | None = None,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        return_frame_features: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, max_images_per_sample, 3, height, width)`):
            Each sample's images, zero-padded at the end. An image is scanned as a one-frame video.
        num_images (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Images in each sample. None: all `max_images_per_sample`.
        vision_batch_size, progress_callback, return_frame_features:
            As in `get_video_features` (images count as frames).

        Returns `last_hidden_state`: the vision encoder's feature-layer output `(num_images, num_patches,
        vision_hidden_size)` (and `hidden_states` / `attentions` when requested), and `pooler_output`: one
        `(num_llm_tokens, hidden_size)` tensor per image, in sample then prompt order.
        """
        _check_visual_shape("pixel_values", pixel_values, "(batch_size, max_images_per_sample, 3, height, width)")
        batch_size, max_images = pixel_values.shape[:2]
        counts = [max_images] * batch_size if num_images is None else num_images.tolist()
        images = _select_padded(pixel_values, counts, "pixel_values")
        ones = [1] * images.shape[0]
        return self._encode(images, ones, ones, vision_batch_size, progress_callback, return_frame_features, **kwargs)

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        token_id: int,
        features: torch.Tensor,
    ) -> torch.BoolTensor:
        """Mask `(batch_size, sequence_length, 1)` of the placeholders `features` `(num_tokens, hidden_size)` replace.

        Raises if the number of placeholders differs from the number of feature tokens.
        """
        if input_ids is None:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == token_id
        kind = "video" if token_id == self.config.video_token_id else "image"

        def message():
            return (
                f"The prompt has {int(mask.sum())} {kind} placeholder tokens (id {token_id}) but the {kind} inputs "
                f"produce {features.shape[0]} tokens. Build inputs with StormProcessor, which expands placeholders "
                "with the same frame counts, pooling and `temporal_sampling_stride` the model uses."
            )

        torch_compilable_check(mask.sum() == features.shape[0], message)
        return mask.unsqueeze(-1).to(inputs_embeds.device)

    def _merge(self, input_ids, inputs_embeds, token_id, encoded: BaseModelOutputWithPooling):
        features = torch.cat(encoded.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
        mask = self.get_placeholder_mask(input_ids, inputs_embeds, token_id, features)
        return inputs_embeds.masked_scatter(mask, features), features

    def _check_placeholders_have_inputs(self, input_ids, pixel_values, pixel_values_videos, past_key_values) -> None:
        """At prefill (empty cache), image/video placeholders in `input_ids` need their pixels: without them the
        placeholders would be read as plain text. Later decode steps (cached) receive new tokens only and are not
        checked."""
        if input_ids is None or is_torchdynamo_compiling():
            return
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            return
        for kind, token_id, pixels, name in (
            ("image", self.config.image_token_id, pixel_values, "pixel_values"),
            ("video", self.config.video_token_id, pixel_values_videos, "pixel_values_videos"),
        ):
            if pixels is None:
                placeholders = input_ids == token_id
                message = (
                    f"The prompt has {{}} {kind} placeholder tokens (id {token_id}) but no `{name}`: the {kind} "
                    f"inputs are missing. Build the inputs with StormProcessor from the {kind}s (its `{name}` must "
                    "reach the model, e.g. keep it through your data collator), or remove the placeholders from a "
                    "text-only prompt."
                )
                torch_compilable_check(~placeholders.any(), lambda: message.format(int(placeholders.sum())))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_images: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        temporal_sampling_stride: torch.LongTensor | int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        **kwargs,
    ) -> StormModelOutputWithPast:
        r"""
        Visual inputs (see `get_image_features` / `get_video_features` for shapes) replace the image and video
        placeholder tokens of `input_ids` `(batch_size, sequence_length)`; pass them at prefill only (placeholders
        without them raise there). `vision_batch_size` and `progress_callback` are those of `get_video_features`.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        past_key_values = kwargs.pop("cache", past_key_values)
        self._check_placeholders_have_inputs(input_ids, pixel_values, pixel_values_videos, past_key_values)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = video_features = image_outputs = video_outputs = None
        # the language model needs the compressed tokens only: the vision features of all frames are not kept
        vision_settings = dict(
            vision_batch_size=vision_batch_size,
            progress_callback=progress_callback,
            return_frame_features=False,
            **{name: kwargs[name] for name in ("output_hidden_states", "output_attentions") if name in kwargs},
        )
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, num_images, **vision_settings)
            inputs_embeds, image_features = self._merge(
                input_ids, inputs_embeds, self.config.image_token_id, image_outputs
            )
        if pixel_values_videos is not None:
            video_outputs = self.get_video_features(
                pixel_values_videos, video_num_frames, temporal_sampling_stride, **vision_settings
            )
            inputs_embeds, video_features = self._merge(
                input_ids, inputs_embeds, self.config.video_token_id, video_outputs
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_NAME: past_key_values},
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return StormModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            video_hidden_states=video_features,
            image_outputs=image_outputs,
            video_outputs=video_outputs,
        )


class StormForConditionalGeneration(StormPreTrainedModel, GenerationMixin):
    """STORM with a language modeling head: answers questions about videos and images."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.model = StormModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`. A model registered for remote code (`register_for_auto_class`, which names
        one Auto class) is mapped in the saved `auto_map` by every Auto class that loads it as remote code:
        `AutoModelForImageTextToText` (the image-text-to-text pipeline) and `AutoModelForMultimodalLM` (`transformers
        serve`)."""
        if self.is_remote_code():
            name = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            auto_classes = ("AutoModelForImageTextToText", "AutoModelForMultimodalLM")
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                **dict.fromkeys(auto_classes, name),
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_num_frames: torch.LongTensor | None = None,
        temporal_sampling_stride: torch.LongTensor | int | None = None,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        return_frame_features: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """See `StormModel.get_video_features`."""
        return self.model.get_video_features(
            pixel_values_videos,
            video_num_frames,
            temporal_sampling_stride,
            vision_batch_size,
            progress_callback,
            return_frame_features,
            **kwargs,
        )

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        num_images: torch.LongTensor | None = None,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        return_frame_features: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """See `StormModel.get_image_features`."""
        return self.model.get_image_features(
            pixel_values, num_images, vision_batch_size, progress_callback, return_frame_features, **kwargs
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_images: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        temporal_sampling_stride: torch.LongTensor | int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_batch_size: int | None = None,
        progress_callback: ProgressCallback | None = None,
        **kwargs,
    ) -> StormCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets aligned with `input_ids` (shifted inside the loss); -100 is ignored.
        vision_batch_size (`int`, *optional*):
            Frames per vision-tower call (default `config.vision_batch_size`); also a `generate` kwarg.
        progress_callback (`Callable[[int, int], None]`, *optional*):
            `progress_callback(done_frames, total_frames)` after each vision micro-batch; also a `generate` kwarg.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            num_images=num_images,
            pixel_values_videos=pixel_values_videos,
            video_num_frames=video_num_frames,
            temporal_sampling_stride=temporal_sampling_stride,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=kwargs.pop("cache", past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            vision_batch_size=vision_batch_size,
            progress_callback=progress_callback,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        return StormCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            video_hidden_states=outputs.video_hidden_states,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
        )


__all__ = [
    "StormForConditionalGeneration",
    "StormModel",
    "StormPreTrainedModel",
    "StormPixelShuffle",
    "StormMambaMixer",
    "StormMambaLayer",
    "StormTemporalProjector",
    "StormTokenCompressor",
    "temporal_pool",
    "spatial_pool",
    "temporal_sample",
]
