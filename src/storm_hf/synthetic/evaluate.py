"""Greedy exact-match evaluation on the synthetic temporal task."""

from collections import defaultdict

from .render import ORDER_DEPENDENT_TYPES


def normalise_answer(text: str) -> str:
    return text.strip().strip(".").lower()


def prompt_inputs(processor, rows, **processor_kwargs):
    """The model inputs for answering `rows` (their conversations without the assistant turn, with the generation
    prompt, left-padded); `processor_kwargs` go to the processor call."""
    from ..training import clean_messages

    conversations = [
        [message for message in clean_messages(row["messages"]) if message["role"] != "assistant"] for row in rows
    ]
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, **processor_kwargs},
    )
    inputs.pop("video_metadata", None)
    return inputs


def evaluate_temporal_task(
    model, processor, dataset, batch_size: int = 32, max_new_tokens: int = 3, **processor_kwargs
) -> dict[str, float]:
    """Greedy exact-match accuracy per question type on `dataset` (a `datasets.Dataset` or a list of rows with
    `messages`, `answer`, `question_type`).

    The assistant turn is dropped from each conversation and the model generates the answer. `processor_kwargs` go to
    the processor call (e.g. `temporal_sampling_stride=2` for test-time temporal sampling). Returns
    `{question_type: accuracy, ..., "order_dependent": mean over order-dependent rows, "all": mean over all rows}`.
    """
    import torch

    model.eval()
    correct, total = defaultdict(int), defaultdict(int)
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        inputs = prompt_inputs(processor, rows, **processor_kwargs)
        with torch.no_grad():
            generated = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
            )
        answers = processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])
        for answer, row in zip(answers, rows):
            hit = normalise_answer(answer) == normalise_answer(row["answer"])
            question_type = row["question_type"]
            for key in (question_type, "all") + (
                ("order_dependent",) if question_type in ORDER_DEPENDENT_TYPES else ()
            ):
                correct[key] += hit
                total[key] += 1
    return {key: correct[key] / total[key] for key in total}
