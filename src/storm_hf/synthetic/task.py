"""The tokenizer, processor and model configuration the synthetic temporal task is trained with."""

from ..processing.processing_storm import VISION_SPECIAL_TOKENS
from .render import COLOURS, DOWNSAMPLE_RATIO, IMAGE_SIZE, NUM_FRAMES, PATCH_SIZE, QUESTIONS


# The Qwen2-VL special tokens: ChatML's and the vision placeholders the STORM chat template writes.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *VISION_SPECIAL_TOKENS)
SYSTEM_PROMPT = "You are a helpful assistant."
LANGUAGE_MODEL_WIDTH = 128


def byte_level_vocab() -> dict[str, int]:
    """The 256 byte tokens of a byte-level BPE vocabulary: GPT-2's printable stand-in of each byte -> the byte value."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    stand_ins = bytes_to_unicode()
    return {stand_ins[byte]: byte for byte in range(256)}


def task_words() -> list[str]:
    """Every word of the task's prompts and answers (the chat template's role names and system prompt included)."""
    text = " ".join([SYSTEM_PROMPT, "system user assistant", *QUESTIONS.values(), *COLOURS, "left right yes no"])
    words = {word.strip("?,.") for word in text.split()}
    return sorted(word for word in words if word)


def build_task_tokenizer():
    """A byte-level BPE tokenizer with the Qwen2-VL special tokens in which every word of the task is one token.

    Any text still tokenizes (byte fallback through the 256 byte tokens); the task's words, with and without a leading
    space, are single tokens, so that answers are one token and prompts are short. `eos_token` is `<|im_end|>`, the end
    of a ChatML turn, and padding is on the left (for batched generation).
    """
    from transformers import Qwen2Tokenizer

    vocab = byte_level_vocab()
    merges = []

    def make(vocab, merges):
        return Qwen2Tokenizer(
            vocab=dict(vocab),
            merges=list(merges),
            unk_token="<|endoftext|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=list(SPECIAL_TOKENS[1:]),
            padding_side="left",
        )

    # Grow the merges until every word is one token: each round merges the first two pieces of every word that is still
    # split. A merge added later has a later rank, so it never changes how an already whole word is split.
    texts = [text for word in task_words() for text in (word, " " + word)]
    while True:
        tokenizer = make(vocab, merges)
        added = False
        for text in texts:
            pieces = tokenizer.tokenize(text)
            if len(pieces) > 1 and pieces[0] + pieces[1] not in vocab:
                vocab[pieces[0] + pieces[1]] = len(vocab)
                merges.append((pieces[0], pieces[1]))
                added = True
        if not added:
            break
    for text in texts:
        if len(tokenizer.tokenize(text)) != 1:
            raise RuntimeError(f"The task tokenizer splits {text!r} into {tokenizer.tokenize(text)}.")
    return tokenizer


def build_task_processor(tokenizer=None, num_frames: int = NUM_FRAMES, **config_settings):
    """A `StormProcessor` matching `temporal_task_config(tokenizer, **config_settings)` (built by
    `conversion.build_processor` from that config): the task tokenizer, the config's frame size and token grid,
    `num_frames` frames sampled per video. Saves and loads like any processor (`save_pretrained`, `AutoProcessor`)."""
    from ..conversion.processor import build_processor

    tokenizer = tokenizer if tokenizer is not None else build_task_tokenizer()
    return build_processor(tokenizer, temporal_task_config(tokenizer, **config_settings), num_frames=num_frames)


def temporal_task_config(
    tokenizer=None,
    mamba_num_layers: int = 2,
    size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    downsample_ratio: int = DOWNSAMPLE_RATIO,
    **overrides,
):
    """A tiny STORM (under 1M parameters) for the task: SigLIP (2 layers, 64 wide) on 32 px frames in 8 px patches
    (a 4x4 grid), a 4x4 pixel-shuffle (one 1024-wide token per frame), Linear -> `mamba_num_layers` bidirectional
    Mamba layers 128 wide, temporal pooling k=4, a 2-layer 128-wide Qwen2 over the task tokenizer's vocabulary.

    The language model (and the projector's Linear, which the model initialises with the LLM's setting) starts at
    `initializer_range = hidden_size**-0.5` (0.088), not Qwen2's 0.02, which is sized for 3584-wide layers: at 0.02
    the 128-wide LLM's attention logits start ~16x too small to be learned, and every order question sat at its answer
    prior for hundreds of steps (`benchmarks/results/temporal_task_diagnosis.md`).

    `mamba_num_layers=0` gives the same model without a temporal encoder (pixel-shuffle -> Linear -> pooling).
    Keyword arguments override `StormConfig` fields.
    """
    from ..modeling import StormConfig

    tokenizer = tokenizer if tokenizer is not None else build_task_tokenizer()
    settings = dict(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=size,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=LANGUAGE_MODEL_WIDTH,
            intermediate_size=2 * LANGUAGE_MODEL_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            initializer_range=LANGUAGE_MODEL_WIDTH**-0.5,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_feature_layer=-1,
        downsample_ratio=downsample_ratio,
        mamba_num_layers=mamba_num_layers,
        mamba_state_size=8,
        temporal_pool_size=4,
        spatial_pool_size=1,
    )
    settings.update(overrides)
    return StormConfig(**settings)
