"""What each multimodal wrapper adds to its LLM's prefill and decode: the same Qwen2 weights generating from the same
text-only prompt as `AutoModelForCausalLM`, inside `StormForConditionalGeneration` and inside
`LlavaOnevisionForConditionalGeneration` (issue 24, item 2: the LLM inside STORM as fast as inside the peers).

A text-only prompt runs no vision tower: every difference between the three is per-call work of the wrapper (input
checks, embedding and merge, cache handling, casts, host syncs). The three models are built from `bench_peers.py`'s
configs, then the plain model's language model and LM head replace the others' (the same modules: every model reads
the same weight tensors, so no difference comes from where a copy of 2.5 GB of weights landed in memory); the check
that the comparison is fair is that all three generate the same greedy tokens. Each repeat runs the three models one
after the other (interleaved), `torch.no_grad()`; per model: prefill = time to the first token, decode = median time
between consecutive tokens after it. Reported: the minimum over repeats (CPU and wall), and each wrapper relative to
the plain model.

    python benchmarks/bench_llm_overhead.py                      # 0.5b LLM, 1060-token prompt, 1 thread
    python benchmarks/bench_llm_overhead.py --llm 1.5b --prompt-tokens 2084 --repeats 3
"""

import argparse
import collections
import shlex
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import LLM_SHAPES, PAD_TOKEN_ID, VISION_SHAPES, build  # noqa: E402
from common import start_run, write_results  # noqa: E402


MODELS = {"plain Qwen2 (AutoModelForCausalLM)": "LLM alone", "inside STORM": "STORM T.Pool"}
MODELS["inside LLaVA-OneVision"] = "LLaVA-OneVision"
OPERATION_TOKENS = (3, 9)  # generated tokens of the two profiled calls: what differs more at 9 differs per step


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", choices=list(LLM_SHAPES), default="0.5b")
    parser.add_argument("--prompt-tokens", type=int, default=1060, help="1060: STORM T.Pool's prompt at 64 frames")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="llm_overhead", help="results file name in benchmarks/results")
    return parser.parse_args()


def build_models(args) -> dict:
    """The three models, the wrappers holding the plain model's own language model and LM head."""
    import torch

    shapes = argparse.Namespace(llm=args.llm, vision="siglip-base", storm_config={}, vision_attention="sdpa")
    models = {}
    for name, arm in MODELS.items():
        torch.manual_seed(0)
        models[name] = build(arm, shapes)[0]
    plain = models["plain Qwen2 (AutoModelForCausalLM)"]
    for model in models.values():
        if model is not plain:  # the same modules, not copies: weights in different memory decode at different speeds
            model.model.language_model = plain.model
            model.lm_head = plain.lm_head
    return models


def greedy_generate(model, input_ids, new_tokens: int, **kwargs):
    """`generate` of exactly `new_tokens` greedy tokens from an unpadded prompt."""
    import torch

    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=PAD_TOKEN_ID,
        **kwargs,
    )


def generate_timed(model, input_ids, new_tokens: int) -> dict:
    """Greedy `generate`; returns the tokens, the prefill (to the first token) and the median decode step, in CPU and
    wall seconds."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    marks = []

    class Clock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    start = (time.perf_counter(), time.process_time())
    tokens = greedy_generate(model, input_ids, new_tokens, stopping_criteria=StoppingCriteriaList([Clock()]))
    steps = list(zip(marks, marks[1:]))
    return {
        "tokens": tokens[0, input_ids.shape[1] :].tolist(),
        "prefill_s": marks[0][0] - start[0],
        "prefill_cpu_s": marks[0][1] - start[1],
        "decode_ms": statistics.median(b[0] - a[0] for a, b in steps) * 1e3,
        "decode_cpu_ms": statistics.median(b[1] - a[1] for a, b in steps) * 1e3,
    }


def operation_counts(model, input_ids, new_tokens: int) -> collections.Counter:
    """How many times `generate` of `new_tokens` greedy tokens calls each aten operation (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        greedy_generate(model, input_ids, new_tokens)
    return collections.Counter({event.key: event.count for event in profiler.key_averages()})


def operation_differences(counts: dict) -> dict:
    """Per wrapper, the operations it calls more (+) or less (-) often than the plain model: `{name: {op: count}}`."""
    plain = counts["plain Qwen2 (AutoModelForCausalLM)"]
    differences = {}
    for name, wrapper in counts.items():
        if wrapper is not plain:
            changed = {op: wrapper[op] - plain[op] for op in wrapper.keys() | plain.keys() if wrapper[op] != plain[op]}
            differences[name] = dict(sorted(changed.items()))
    return differences


def operations_per_step(fewer: dict, more: dict, steps: int) -> dict:
    """Per wrapper, the operations it adds (+) or saves (-) per decode step: how its differences from the plain model
    (`operation_differences` of two calls) grow over the `steps` more tokens of the second call."""
    return {
        name: {
            op: (more[name].get(op, 0) - fewer[name].get(op, 0)) / steps
            for op in fewer[name].keys() | more[name].keys()
            if more[name].get(op, 0) != fewer[name].get(op, 0)
        }
        for name in fewer
    }


def describe_operations(name: str, differences: dict, per_step: dict) -> str:
    """One sentence: the operations `name` calls more or less often than the plain model, and which of them per step."""
    if not differences:
        return f"{name}: the same operations, as many times."
    listed = ", ".join(f"`{op}` {count:+d}" for op, count in differences.items())
    steps = ", ".join(f"`{op}` {count:+g}" for op, count in sorted(per_step.items())) or "none"
    return f"{name}: {listed} at {max(OPERATION_TOKENS)} tokens; per decode step: {steps}."


def render(runs: dict) -> str:
    best = {
        name: {key: min(run[key] for run in model_runs) for key in model_runs[0] if key != "tokens"}
        for name, model_runs in runs.items()
    }
    plain = best["plain Qwen2 (AutoModelForCausalLM)"]
    lines = [
        "| LLM | prefill CPU s (wall) | vs plain | decode ms/token CPU (wall) | vs plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in best.items():
        lines.append(
            f"| {name} | {row['prefill_cpu_s']:.2f} ({row['prefill_s']:.2f}) | "
            f"{row['prefill_cpu_s'] / plain['prefill_cpu_s'] - 1:+.1%} | "
            f"{row['decode_cpu_ms']:.1f} ({row['decode_ms']:.1f}) | "
            f"{row['decode_cpu_ms'] / plain['decode_cpu_ms'] - 1:+.1%} |"
        )
    return "\n".join(lines)


def main():
    args = parse_args()
    import torch

    run = start_run([shlex.quote(arg) for arg in sys.argv[1:]])
    torch.set_num_threads(args.threads)
    models = build_models(args)
    input_ids = torch.randint(1, 150000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    runs = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():  # warm-up
            generate_timed(model, input_ids[:, :64], 3)
        for repeat in range(args.repeats):
            for name, model in models.items():
                runs[name].append(generate_timed(model, input_ids, args.new_tokens))
                print(repeat, name, {k: v for k, v in runs[name][-1].items() if k != "tokens"}, flush=True)
        differences = {
            tokens: operation_differences(
                {name: operation_counts(model, input_ids[:, :64], tokens) for name, model in models.items()}
            )
            for tokens in OPERATION_TOKENS
        }
    few, many = OPERATION_TOKENS
    per_step = operations_per_step(differences[few], differences[many], many - few)
    same_tokens = len({tuple(run["tokens"]) for model_runs in runs.values() for run in model_runs}) == 1
    if not same_tokens:
        raise SystemExit("the three models generated different tokens: they do not run the same LLM")
    title = f"# The same LLM inside STORM, inside LLaVA-OneVision and alone ({args.llm}, CPU)"
    body = (
        f"`{args.llm}`-shaped Qwen2 (bench_peers.py's config; the vision towers "
        f"({VISION_SHAPES['siglip-base']['px']} px SigLIP-base) are built but never run), "
        "one set of random weights, the same modules in all three, float32, "
        f"{args.threads} torch thread(s), sdpa attention. A text-only prompt of {args.prompt_tokens} tokens, "
        f"{args.new_tokens} greedy tokens; all three generated the same tokens (checked). Minimum over {args.repeats} "
        "interleaved repeats.\n\nOperations (torch.profiler): the aten operations `generate` calls for a 64-token "
        f"prompt and {few} or {many} greedy tokens, per wrapper against the plain model. "
        + " ".join(describe_operations(name, differences[many][name], per_step[name]) for name in per_step)
    )
    data = {"runs": runs, "operation_differences": differences, "operations_per_step": per_step, "settings": vars(args)}
    path = write_results(args.name, title, body, data, run, headline=render(runs))
    print(path.read_text())


if __name__ == "__main__":
    main()
