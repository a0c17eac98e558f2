"""Live video with STORM's causal projector: frames are encoded once, as they arrive, and questions are answered from
the language model's KV cache without re-encoding or re-prefilling the video.

Dataflow of `StormStreamingSession.add_frames` (one concept per step, each a public piece of the model):

    frames -> video processor (resize, rescale, normalise; no frame sampling)
           -> vision tower, `vision_batch_size` frames per call (`StormModel.get_frame_features`)
           -> temporal projector, continuing from its per-layer `StormMambaState`s
           -> projected frames wait until their temporal-pooling group of `temporal_pool_size` frames is complete
           -> token compressor on the complete group (temporal pool -> spatial pool): one pooled frame of tokens
           -> the language model appends the tokens to its KV cache (`StormStreamingCacheLayer`s: appended in place)

Chat structure (the processor's chat template, the same text the offline prompt has):

    <|im_start|>system ... <|im_end|>\\n<|im_start|>user\\n<|vision_start|>   prefilled when the session starts
    <video tokens of every complete (kept) pooling group>                       appended as groups complete
    [video tokens of the partial last group]                                    } temporary: prefilled by `ask`,
    <|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}          } cropped away afterwards

The video block stays open in the cache. `ask` extends the cache with what closes it (the partial last group, pooled
over the frames it has as the offline model pools a shorter last group, then `<|vision_end|>`, the question and the
assistant header), generates, and crops the cache back to the video (`Cache.crop`). Every answer therefore sees
exactly the prompt the offline model sees for all frames so far and that one question -- the greedy tokens and the
logits equal the offline model's -- and the stream continues after an answer without re-encoding or re-prefilling
anything. Earlier questions and answers are not kept in the context (the offline prompt has one question).

End of stream: `end_stream()` appends the partial last group for good (as the offline model's shorter last group);
after it, `add_frames` raises. Without it, every `ask` pools the partial group afresh (a few tokens).

Temporal sampling: the projector still scans every frame (the Mamba state needs them, as offline); with stride `s`
only pooling groups `0, s, 2s, ...` reach the language model, the groups the offline `temporal_sample` keeps.
"""

import time
from collections.abc import Iterator

import numpy as np
import PIL.Image
import torch
from transformers.cache_utils import Cache, DynamicLayer

from .modeling.modeling_storm import CACHE_NAME
from .processing.video_decoding import iter_video_frames


class StormStreamingCacheLayer(DynamicLayer):
    """A `DynamicLayer` that appends in place: keys and values are views of buffers with spare room, grown by half
    when full, so that appending copies only the new tokens (`DynamicLayer.update` copies the whole cache with
    `torch.cat` at every decoding step, an O(cache) cost per token of every answer on a long stream). `crop`
    (inherited) shortens the views; the next tokens are written over the cropped ones.

    keys, values: `(batch_size, num_key_value_heads, sequence_length, head_dim)` views of the buffers.
    """

    growth = 1.5

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            capacity = max(end, int(self.growth * length))
            self.key_buffer = self._grown(self.key_buffer, key_states, length, capacity)
            self.value_buffer = self._grown(self.value_buffer, value_states, length, capacity)
        self.key_buffer[..., length:end, :] = key_states
        self.value_buffer[..., length:end, :] = value_states
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values

    @staticmethod
    def _grown(buffer: torch.Tensor | None, states: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        grown = states.new_empty(*states.shape[:-2], capacity, states.shape[-1])
        if buffer is not None:
            grown[..., :length, :] = buffer[..., :length, :]
        return grown


class StormStreamingSession:
    r"""
    A live-video conversation with a causal STORM model (`mamba_bidirectional=False`). See the module docstring for
    the dataflow and the chat structure.

    Args:
        model ([`StormForConditionalGeneration`]): a causal STORM model, in eval mode.
        processor ([`StormProcessor`]): its processor (video processor for the pixels, tokenizer and chat template).
        system_prompt (`str`, *optional*): system message; defaults to the chat template's default one.
        vision_batch_size (`int`, *optional*): frames per vision-tower and projector call (bounds the activation
            memory); defaults to the model's `config.vision_batch_size`.
        temporal_sampling_stride (`int`, *optional*): keep every n-th pooled frame; defaults to the processor's.

    Example:

    ```python
    >>> session = StormStreamingSession(model, processor)
    >>> for frames in chunks:  # (num_frames, height, width, 3) uint8 arrays, tensors or lists of PIL images
    ...     session.add_frames(frames)
    ...     print(session.ask("What is happening?", max_new_tokens=32))
    ```
    """

    def __init__(
        self,
        model,
        processor,
        system_prompt: str | None = None,
        vision_batch_size: int | None = None,
        temporal_sampling_stride: int | None = None,
    ):
        config = model.config
        if config.mamba_bidirectional:
            raise ValueError(
                "Streaming needs the causal temporal projector: this model scans the video in both directions "
                "(`mamba_bidirectional=True`), so every new frame would change the tokens of all earlier ones. Use a "
                "model trained with `mamba_bidirectional=False` (the paper's causal variant)."
            )
        if model.training:
            raise ValueError("Call `model.eval()` before streaming: dropout would make answers depend on the split.")
        if vision_batch_size is None:
            vision_batch_size = config.vision_batch_size
        stride = temporal_sampling_stride
        if stride is None:
            stride = processor.video_processor.temporal_sampling_stride
        for name, value in (
            ("vision_batch_size", vision_batch_size),
            ("temporal_sampling_stride", stride),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        self.model = model
        self.processor = processor
        self.system_prompt = system_prompt
        self.vision_batch_size = vision_batch_size
        self.temporal_sampling_stride = stride
        self.temporal_pool_size = config.temporal_pool_size

        self.num_frames = 0  # frames added so far
        self.num_groups = 0  # complete temporal-pooling groups (kept or skipped by the sampling stride)
        self.num_video_tokens = 0  # video tokens in the cache (complete kept groups, and the last one after end_stream)
        self.ended = False
        self._mamba_states = None  # per-layer StormMambaState after the last frame
        self._open_group = None  # projected frames of the incomplete group, (num_frames, height, width, hidden_size)

        self._prefix_text = self._chat_parts("")[0]
        self._prefix_ids = self._tokenize(self._prefix_text)
        self.cache = Cache(layer_class_to_replicate=StormStreamingCacheLayer)
        self._prefill(self.model.get_input_embeddings()(torch.tensor([self._prefix_ids], device=model.device)))

    # ------------------------------------------------------------------ video

    @torch.inference_mode()
    def add_frames(self, frames) -> int:
        """Encodes new frames and appends the video tokens of every pooling group they complete to the KV cache.

        frames: a `(num_frames, height, width, 3)` (or `(num_frames, 3, height, width)`) uint8 array or tensor, a
        `(height, width, 3)` single frame, a PIL image or a list of frames. Returns the number of video tokens appended
        (0 while the current group is incomplete).
        """
        if self.ended:
            raise RuntimeError("The stream was ended with `end_stream()`; start a new session for a new video.")
        pixels = self._pixel_values(frames)
        appended = 0
        for start in range(0, pixels.shape[0], self.vision_batch_size):
            batch = pixels[start : start + self.vision_batch_size]
            projected = self._project(self._frame_features(batch))
            self.num_frames += batch.shape[0]
            self._open_group = projected if self._open_group is None else torch.cat([self._open_group, projected])
            num_complete = self._open_group.shape[0] // self.temporal_pool_size
            groups = self._open_group[: num_complete * self.temporal_pool_size].unflatten(
                0, (num_complete, self.temporal_pool_size)
            )
            self._open_group = self._open_group[num_complete * self.temporal_pool_size :]
            tokens = [self._compress(group) for group in groups if self._keep_next_group()]
            appended += self._append_video_tokens(tokens)
        return appended

    @torch.inference_mode()
    def end_stream(self) -> int:
        """Appends the partial last group for good (pooled over its frames, as offline) and closes the stream to new
        frames. Returns the number of video tokens appended."""
        if self.ended:
            return 0
        self.ended = True
        return self._append_video_tokens(self._partial_group_tokens())

    def _pixel_values(self, frames) -> torch.Tensor:
        """The video processor's resize / rescale / normalise of `frames`, without sampling: `(num_frames, 3, H, W)`."""
        if isinstance(frames, PIL.Image.Image) or (isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim == 3):
            frames = [frames]
        if isinstance(frames, (list, tuple)) and not frames:
            raise ValueError("`add_frames` got no frames.")
        if isinstance(frames, (str, bytes)) or hasattr(frames, "read"):
            raise TypeError(
                "`add_frames` takes decoded frames; read a video file or a live source with "
                "`iter_video_frames(source)` and pass the frames it yields."
            )
        processed = self.processor.video_processor(frames, do_sample_frames=False, return_tensors=None)
        videos = processed["pixel_values_videos"]
        if len(videos) != 1:
            raise ValueError(f"`add_frames` takes the frames of one video, got {len(videos)} videos (a 5D input?).")
        return videos[0].to(self.model.device, self.model.dtype)

    def _frame_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Vision tower on one micro-batch `(batch, 3, H, W)` -> `(batch, grid_height, grid_width, vision_hidden)`."""
        return self.model.model.get_frame_features(pixels)

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        """Causal projector continuing from the carried states: `(n, gh, gw, vision_hidden)` -> `(n, h, w, hidden)`."""
        (projected,), self._mamba_states = self.model.model.temporal_projector(
            features, [features.shape[0]], self._mamba_states
        )
        return projected

    def _compress(self, group: torch.Tensor) -> torch.Tensor:
        """One pooling group `(<= temporal_pool_size, h, w, hidden)` -> its LLM tokens `(tokens, hidden)`."""
        return self.model.model.token_compressor(group, temporal_sampling_stride=1)

    def _keep_next_group(self) -> bool:
        """Counts a complete group; whether the sampling stride keeps it (groups 0, s, 2s, ... as `temporal_sample`)."""
        keep = self.num_groups % self.temporal_sampling_stride == 0
        self.num_groups += 1
        return keep

    def _partial_group_tokens(self) -> list[torch.Tensor]:
        """Tokens of the incomplete last group, if it has frames and the sampling stride keeps it (not counted)."""
        if self._open_group is None or self._open_group.shape[0] == 0:
            return []
        if self.num_groups % self.temporal_sampling_stride:
            return []
        return [self._compress(self._open_group)]

    def _append_video_tokens(self, tokens: list[torch.Tensor]) -> int:
        if not tokens:
            return 0
        embeddings = torch.cat(tokens).to(self.model.get_input_embeddings().weight.dtype)
        self._prefill(embeddings[None])
        self.num_video_tokens += embeddings.shape[0]
        return embeddings.shape[0]

    def _prefill(self, embeddings: torch.Tensor) -> None:
        """Appends `(1, length, hidden_size)` embeddings to the KV cache (positions follow the cache)."""
        self.model.model.language_model(inputs_embeds=embeddings, use_cache=True, **{CACHE_NAME: self.cache})

    # ------------------------------------------------------------------ questions

    def generate(self, question: str, **generate_kwargs):
        """Answers `question` about the frames so far with `model.generate`, from the KV cache.

        Returns what `model.generate` returns for the equivalent offline prompt: `sequences` (or the tensor) hold the
        prompt ids -- one `<|video_pad|>` per video token -- then the answer. The cache is cropped back to the video
        afterwards. Beam search and several return sequences are not supported (they reorder or repeat the cache).
        """
        return self._generate(question, **generate_kwargs)[0]

    def ask(self, question: str, **generate_kwargs) -> str:
        """Answers `question` about the frames so far; returns the decoded answer. See `generate`."""
        output, prompt_length = self._generate(question, **generate_kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return self.processor.tokenizer.decode(sequences[0, prompt_length:], skip_special_tokens=True)

    @torch.inference_mode()
    def _generate(self, question: str, **generate_kwargs) -> tuple:
        """`model.generate`'s output and the prompt length (the answer starts there)."""
        if self.num_frames == 0:
            raise ValueError("No frames yet: call `add_frames` before asking about the video.")
        for name in ("num_beams", "num_return_sequences"):
            if generate_kwargs.get(name, 1) != 1:
                raise ValueError(f"`{name}={generate_kwargs[name]}` is not supported in streaming; use the default 1.")
        for name in (
            "input_ids",
            "inputs_embeds",
            "past_key_values",
            "attention_mask",
            "pixel_values_videos",
        ):
            if name in generate_kwargs:
                raise ValueError(f"`{name}` is built by the session from the stream; do not pass it.")
        prefix, suffix = self._chat_parts(question)
        if prefix != self._prefix_text:
            raise ValueError(
                "The chat template renders the text before the video differently for this question; the session "
                "prefilled it once and cannot change it."
            )
        video_length = self.cache.get_seq_length()
        try:
            partial = self._partial_group_tokens() if not self.ended else []
            num_video_tokens = self.num_video_tokens + sum(tokens.shape[0] for tokens in partial)
            if partial:
                self._prefill(torch.cat(partial).to(self.model.get_input_embeddings().weight.dtype)[None])
            ids = self._prefix_ids + [self.processor.video_token_id] * num_video_tokens + self._tokenize(suffix)
            input_ids = torch.tensor([ids], device=self.model.device)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **{CACHE_NAME: self.cache},
                **generate_kwargs,
            )
            return output, len(ids)
        finally:
            self.cache.crop(video_length - self.cache.get_seq_length())

    def _chat_parts(self, question: str) -> tuple[str, str]:
        """The processor's chat prompt for one video and `question`, split around the video placeholder."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": question}],
            }
        ]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        parts = text.split(self.processor.video_token)
        if len(parts) != 2:
            raise ValueError(
                f"The chat template must render one {self.processor.video_token} for the video, got {len(parts) - 1}."
            )
        return parts[0], parts[1]

    def _tokenize(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of keys and values of the cached tokens (system prompt, user header and video tokens). The buffers
        hold up to `StormStreamingCacheLayer.growth` times the longest the cache has been (video + question + answer):
        see `kv_cache_allocated_bytes`."""
        return sum(
            tensor.numel() * tensor.element_size()
            for layer in self.cache.layers
            if layer.is_initialized
            for tensor in (layer.keys, layer.values)
        )

    @property
    def kv_cache_allocated_bytes(self) -> int:
        """Bytes of the cache's buffers, spare room included."""
        return sum(
            tensor.numel() * tensor.element_size()
            for layer in self.cache.layers
            if layer.is_initialized
            for tensor in (layer.key_buffer, layer.value_buffer)
        )


def stream_answers(
    session: StormStreamingSession,
    frames: Iterator[tuple[float, np.ndarray]],
    question: str,
    every: float,
    **generate_kwargs,
) -> Iterator[tuple[float, int, str, float]]:
    """Feeds `(time, frame)` pairs to `session` and asks `question` every `every` seconds of video time, and once at
    the end of the stream (after `end_stream`). Yields `(video_time, num_frames, answer, answer_seconds)`."""
    if every <= 0:
        raise ValueError(f"`every` must be a positive number of seconds, got {every}.")
    next_question, pending, seconds, asked_at = None, [], 0.0, 0
    for seconds, frame in frames:
        if next_question is None:
            next_question = seconds + every
        pending.append(frame)
        if seconds >= next_question or len(pending) == session.vision_batch_size:
            session.add_frames(np.stack(pending))
            pending = []
        if seconds >= next_question:
            yield (seconds, *_timed_answer(session, question, generate_kwargs))
            asked_at = session.num_frames
            while next_question <= seconds:
                next_question += every
    if pending:
        session.add_frames(np.stack(pending))
    session.end_stream()
    if session.num_frames > asked_at:
        yield (seconds, *_timed_answer(session, question, generate_kwargs))


def _timed_answer(session: StormStreamingSession, question: str, generate_kwargs: dict) -> tuple[int, str, float]:
    started = time.perf_counter()
    answer = session.ask(question, **generate_kwargs)
    return session.num_frames, answer, time.perf_counter() - started


__all__ = ["StormStreamingCacheLayer", "StormStreamingSession", "iter_video_frames", "stream_answers"]
