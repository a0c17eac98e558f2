"""CPU benchmark of the selective scan of STORM's Mamba projector against the two pure PyTorch scans of transformers.

Methods (all compute the same thing: softplus(delta + bias), the scan, the D skip and the silu(z) gate, in float32):
  ours      storm_hf `selective_scan_chunked`
  mambapy   transformers' `mamba_selective_scan(..., use_mambapy=True)`: mambapy's pscan on (B, L, D, N) tensors,
            what `MambaMixer` runs with `config.use_mambapy=True`
  fallback  transformers' `mamba_selective_scan(..., use_mambapy=False)`: the token-by-token loop `MambaMixer` runs
            without mamba_ssm and mambapy

Every (method, length, mode) is measured in a fresh subprocess, so peak memories don't mix: the peak resident set size
growth over the inputs during the first call (kernel high-water mark, reset after the inputs are built), and the
medians of the wall time and of the process CPU time (all threads, user + system) of `--repeats` calls, the first
included. CPU time is the steadier number when other processes compete for the cores. A measurement that runs past
`--time-limit` (which includes the worker's start-up) is reported as a timeout, with the calls it finished before.

    python benchmarks/bench_scan.py [--lengths 2048 8192 32768] [--repeats 3]   # -> benchmarks/results/scan.md
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from common import start_run, write_results


METHODS = ("ours", "mambapy", "fallback")
MODES = ("fwd", "fwdbwd")
D_MODEL, EXPAND, D_STATE, BATCH = 256, 2, 16, 1
D_INNER = D_MODEL * EXPAND


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per (method, length, mode)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, length, mode = args.worker
        return run_worker(method, int(length), mode, args.repeats, args.threads)

    run = start_run()
    results = {}
    for length in args.lengths:
        for method in args.methods:
            for mode in args.modes:
                result = measure(method, length, mode, args.repeats, args.time_limit, args.threads)
                results[method, length, mode] = result
                print(
                    f"{method:9s} L={length:6d} {mode:6s} {format_time(result):>28s} {format_memory(result):>9s}"
                    f"  load {result['load']:.1f}",
                    flush=True,
                )
    data = {"cells": [{"method": m, "length": n, "mode": mode, **result} for (m, n, mode), result in results.items()]}
    table = results_table(results, args)
    print(f"wrote {write_results('scan', '# Selective scan on CPU', describe(args), data, run, table)}")


def measure(method, length, mode, repeats, time_limit, threads):
    """Runs one worker subprocess and collects the JSON lines it printed before finishing, failing or timing out."""
    command = [sys.executable, __file__, "--worker", method, str(length), mode, "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    load_before = os.getloadavg()[0]
    error = None
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=time_limit)
        stdout, timed_out = completed.stdout, False
        if completed.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
            error = f"killed by signal {-completed.returncode}"
        elif completed.returncode > 0:
            error = completed.stderr.strip().splitlines()[-1]
    except subprocess.TimeoutExpired as timeout:
        stdout, timed_out = timeout.stdout or b"", True
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {
        "wall": [record["wall"] for record in records],
        "cpu": [record["cpu"] for record in records],
        "peak_mib": records[0]["peak_mib"] if records else None,
        "timed_out": timed_out,
        "time_limit": time_limit,
        "error": error,
        # 1-minute load average of the machine, before and after: other processes slow the measurement down
        "load": max(load_before, os.getloadavg()[0]),
    }


def run_worker(method, length, mode, repeats, threads):
    import torch
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan
    from transformers.utils import logging

    from storm_hf.modeling.selective_scan import selective_scan_chunked

    logging.set_verbosity_error()  # transformers warns on each call that mamba_ssm is missing
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    inputs = dict(
        u=torch.randn(BATCH, D_INNER, length),
        delta=torch.randn(BATCH, D_INNER, length),
        A=-torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(D_INNER, 1),
        B=torch.randn(BATCH, D_STATE, length),
        C=torch.randn(BATCH, D_STATE, length),
        D=torch.ones(D_INNER),
        z=torch.randn(BATCH, D_INNER, length),
        delta_bias=torch.empty(D_INNER).uniform_(-6.9, -2.3),  # softplus -> dt in about [0.001, 0.1] as Mamba's init
    )
    backward = mode == "fwdbwd"
    for tensor in inputs.values():
        tensor.requires_grad_(backward)
    grad_output = torch.randn(BATCH, D_INNER, length)

    def call():
        if method == "ours":
            return selective_scan_chunked(**inputs, delta_softplus=True)
        u, delta, *rest = inputs.values()  # transformers names them hidden_states and dt
        return mamba_selective_scan(u, delta, *rest, delta_softplus=True, use_mambapy=method == "mambapy")

    if method == "mambapy":
        check_mambapy_path(call)

    def step():
        if backward:
            call().backward(grad_output)
            for tensor in inputs.values():
                tensor.grad = None
        else:
            with torch.no_grad():
                call()

    baseline_kib = current_rss_kib()
    reset_peak_rss()
    for repeat in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak_mib = (peak_rss_kib() - baseline_kib) / 1024 if repeat == 0 else None
        print(json.dumps({"wall": wall, "cpu": cpu, "peak_mib": peak_mib}), flush=True)


def check_mambapy_path(call) -> None:
    """Makes sure the `mambapy` arm times mambapy's pscan: without mambapy, `mamba_selective_scan(use_mambapy=True)`
    silently runs the token loop. One untimed call with `mambapy.pscan.pscan` wrapped in a counter."""
    from transformers.utils.import_utils import is_mambapy_available

    if not is_mambapy_available():
        raise SystemExit("The mambapy arm needs mambapy (`pip install mambapy`): without it, it would time the loop.")
    import mambapy.pscan

    original, calls = mambapy.pscan.pscan, []

    def counted(*args):
        calls.append(1)
        return original(*args)

    mambapy.pscan.pscan = counted
    try:
        call()
    finally:
        mambapy.pscan.pscan = original
    if not calls:
        raise SystemExit("mamba_selective_scan(use_mambapy=True) did not call mambapy's pscan: the arm is not mambapy.")


def current_rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def reset_peak_rss():
    """Resets the kernel's high-water mark of the resident set size (Linux >= 4.0), which ru_maxrss reports."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def format_seconds(seconds):
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.0f}"


def format_time(result):
    """`wall / CPU s` medians, or why there are none."""
    if result["error"]:
        return f"failed: {result['error']}"
    if result["timed_out"]:
        calls = zip(result["wall"], result["cpu"])
        done = "; ".join(f"{format_seconds(wall)} / {format_seconds(cpu)} s" for wall, cpu in calls)
        return f"timeout >{result['time_limit']:.0f} s" + (f" (calls finished: {done})" if done else "")
    wall, cpu = statistics.median(result["wall"]), statistics.median(result["cpu"])
    return f"{format_seconds(wall)} / {format_seconds(cpu)} s"


def format_memory(result):
    return "n/a" if result["peak_mib"] is None else f"{result['peak_mib']:.0f} MiB"


def speedup(results, method, length):
    """How many times faster ours is at fwd+bwd, by wall and by CPU time."""
    ours, other = results.get(("ours", length, "fwdbwd")), results.get((method, length, "fwdbwd"))
    if method == "ours" or not (ours and other and ours["wall"]) or ours["timed_out"] or other["error"]:
        return ""
    ours_wall, ours_cpu = statistics.median(ours["wall"]), statistics.median(ours["cpu"])
    if not other["wall"]:  # timed out before finishing a call
        return f">{other['time_limit'] / ours_wall:.0f}x wall"
    return f"{statistics.median(other['wall']) / ours_wall:.1f}x / {statistics.median(other['cpu']) / ours_cpu:.1f}x"


def describe(args) -> str:
    return "\n".join(
        [
            f"Shapes: batch {BATCH}, d_model {D_MODEL}, expand {EXPAND} -> d_inner {D_INNER}, d_state {D_STATE}, "
            f"float32, {args.threads or 'default'} torch thread(s). Each cell is one fresh subprocess: medians over "
            f"{args.repeats} calls (the first included) of the wall time and the process CPU time (all threads), and "
            "the peak RSS growth over the inputs during the first call. `fwd` runs under `torch.no_grad()`, `fwd+bwd` "
            "is forward and backward w.r.t. all inputs. `load`: the highest 1-minute load average seen around the "
            "row's measurements (other processes on the machine stretch the wall times).",
            "",
            "- ours: `storm_hf.modeling.selective_scan.selective_scan_chunked` (default chunk_size 32)",
            "- mambapy: transformers `mamba_selective_scan(..., use_mambapy=True)` = mambapy `pscan`, what MambaMixer "
            "runs with `use_mambapy=True`",
            "- fallback: transformers `mamba_selective_scan(..., use_mambapy=False)` = the token loop MambaMixer runs "
            "without mamba_ssm (the scan only, not the whole layer)",
        ]
    )


def results_table(results, args) -> str:
    lines = [
        "| seqlen | method | fwd wall / CPU | fwd peak mem | fwd+bwd wall / CPU | fwd+bwd peak mem "
        "| ours faster, fwd+bwd (wall / CPU) | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for length in args.lengths:
        for method in args.methods:
            cells, loads = [], []
            for mode in MODES:
                result = results.get((method, length, mode))
                cells += ["not run", ""] if result is None else [format_time(result), format_memory(result)]
                loads += [] if result is None else [result["load"]]
            cells += [speedup(results, method, length), f"{max(loads):.1f}" if loads else ""]
            lines.append(f"| {length} | {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
