"""STORM as an lmms-eval chat model (lmms-eval 0.7): the harness behind VideoMME, MLVU, LongVideoBench.

    python -m lmms_eval --model storm --tasks videomme --batch_size 4 \\
        --model_args pretrained=DIR,num_frames=64,temporal_sampling_stride=4

storm-hf registers the model through lmms-eval's entry points (`storm_hf_lmms_eval`), so installing storm-hf next to
lmms-eval is enough. `--model_args`: `pretrained` (a local directory or Hub id), and optionally `device`, `dtype`,
`max_new_tokens` (when the task does not set it), `system_prompt`, and the processor's per-call settings `num_frames`,
`fps`, `temporal_sampling_stride`, `max_visual_tokens`, which apply to every video. Several processes
(`accelerate launch -m lmms_eval ...`) each evaluate their share of the documents on their own device.
"""

from collections.abc import Sequence

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm
from transformers import AutoProcessor

from ..modeling import StormForConditionalGeneration


# The processor's per-call settings that `--model_args` may set (lmms-eval passes them as strings).
PROCESSOR_SETTINGS = {"num_frames": int, "fps": float, "temporal_sampling_stride": int, "max_visual_tokens": int}


def cut_at_stop_sequences(text: str, until: str | Sequence[str] | None) -> str:
    """`text` up to the first occurrence of any of the stop sequences `until` (lmms-eval's `gen_kwargs["until"]`)."""
    if isinstance(until, str):
        until = [until]
    for stop in until or ():
        if stop:
            text = text.split(stop, 1)[0]
    return text


class Storm(lmms):
    """lmms-eval chat model for `StormForConditionalGeneration`: the task's chat messages (videos, images, text) go
    through `StormProcessor.apply_chat_template`, greedy or sampled `generate`, answers cut at the task's `until`.

    Args:
        pretrained: a STORM checkpoint with its processor (directory or Hub id).
        device: where the model runs (default: `cuda` when available, else `cpu`; each process's own device when
            launched with several processes).
        dtype: `"auto"` (the checkpoint's), `"bfloat16"`, `"float16"` or `"float32"`.
        batch_size: documents per `generate` call (`--batch_size`; `--max_batch_size` is not supported).
        max_new_tokens: answer length when the task's `generation_kwargs` do not set one.
        system_prompt: a system turn (text, or a file holding it) put before every conversation.
        num_frames, fps, temporal_sampling_stride, max_visual_tokens: `StormProcessor` settings for every video.
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int | str = 128,
        system_prompt: str | None = None,
        **processor_settings,
    ) -> None:
        super().__init__()
        if max_batch_size is not None:
            raise ValueError("storm batches exactly `--batch_size` documents; drop `--max_batch_size`.")
        unknown = sorted(set(processor_settings) - set(PROCESSOR_SETTINGS))
        if unknown:
            raise TypeError(
                f"Unknown `--model_args` for storm: {unknown}. Use pretrained, device, dtype, batch_size, "
                f"max_new_tokens, system_prompt, or the processor settings {sorted(PROCESSOR_SETTINGS)}."
            )
        self.processor_kwargs = {
            name: PROCESSOR_SETTINGS[name](value) for name, value in processor_settings.items() if value is not None
        }
        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = accelerator.device
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"`dtype={dtype}`: use auto, bfloat16, float16 or float32.")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = StormForConditionalGeneration.from_pretrained(pretrained, dtype=torch_dtype)
        self.model.to(self._device).eval()
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = self._resolve_system_prompt(system_prompt)

    @property
    def device(self) -> torch.device:
        return self._device

    def conversation(self, request_args) -> list[dict]:
        """The chat messages of one request, `Instance.args` = (context, doc_to_messages, gen_kwargs, doc_id, task,
        split), in transformers' format."""
        _, doc_to_messages, _, doc_id, task, split = request_args
        messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id])).to_hf_messages()
        return self._apply_system_prompt(messages, self.system_prompt)

    def generation_settings(self, gen_kwargs: dict) -> dict:
        """`generate` keyword arguments from lmms-eval's `gen_kwargs` (greedy unless `temperature` > 0)."""
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        settings = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            "num_beams": int(gen_kwargs.get("num_beams") or 1),
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            settings["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                settings["top_p"] = float(gen_kwargs["top_p"])
        return settings

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        # Requests with the same generation settings share batches; results come back in the requests' order.
        collator = utils.Collator(
            [request.args for request in requests], lambda args: args[3], group_fn=lambda args: args[2], grouping=True
        )
        results = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="storm")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            gen_kwargs = chunk[0][2]
            inputs = self.processor.apply_chat_template(
                [self.conversation(args) for args in chunk],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left", **self.processor_kwargs},
            )
            inputs.pop("video_metadata", None)
            inputs = inputs.to(self._device)
            generated = self.model.generate(
                **inputs,
                **self.generation_settings(gen_kwargs),
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )[:, inputs["input_ids"].shape[1] :]
            for args, tokens in zip(chunk, generated):
                text = self.processor.decode(tokens, skip_special_tokens=True)
                text = cut_at_stop_sequences(text, gen_kwargs.get("until"))
                pad_token_id = self.processor.tokenizer.pad_token_id
                num_tokens = int((tokens != pad_token_id).sum()) if pad_token_id is not None else len(tokens)
                results.append(GenerationResult(text=text, token_counts=TokenCounts(output_tokens=num_tokens)))
                self.cache_hook.add_partial("generate_until", (args[0], gen_kwargs), text)
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(results)

    def loglikelihood(self, requests):
        raise NotImplementedError("storm answers by generation only: use tasks whose output_type is generate_until.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("storm does not run multi-round lmms-eval tasks yet.")
