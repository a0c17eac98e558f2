"""What every benchmark shares: the provenance of a run, the writer of its results files, and the builders of its
models and videos.

A benchmark calls `start_run()` first and `write_results(...)` last:

    run = start_run()
    ...measure...
    write_results("compression", "# Token compression", body_markdown, data, run, headline=table_markdown)

`write_results` writes `benchmarks/results/<name>.md` and `<name>.json` whole (never appends) with the run's command,
commit, uncommitted-changes flag, UTC date, wall time, machine, load average before/after and package versions.
`headline` (a markdown table) is the part `scripts/readme_tables.py` copies into the README.
"""

import fractions
import gc
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE_START, HEADLINE_END = "<!-- headline -->", "<!-- /headline -->"

# Qwen2-VL's special-token ids, used by the Qwen2-shaped configs below.
VIDEO_TOKEN_ID, IMAGE_TOKEN_ID, PAD_TOKEN_ID = 151656, 151655, 0
PATCH_SIZE = 16  # the SigLIP-base-like tower's patch


# ---------------------------------------------------------------------------------------------------- provenance


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def code_state() -> dict:
    """The commit of the working tree and the tracked files that differ from it (benchmarks measure the tree as is)."""
    changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": _git("rev-parse", "HEAD").strip(), "dirty": bool(changed), "uncommitted_files": changed}


def machine() -> dict:
    """CPU model, architecture, cores, torch threads, OS, and the GPU when one is visible."""
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "architecture": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def versions() -> dict:
    """Versions of Python and of the packages a benchmark's numbers depend on (None: not installed)."""

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    packages = ("torch", "transformers", "storm-hf", "av", "numpy")
    return {"python": platform.python_version(), **{name: installed(name) for name in packages}}


def load_average() -> list[float]:
    """The 1/5/15-minute load average (above the core count: the cores were oversubscribed, wall times inflated)."""
    return [round(load, 2) for load in os.getloadavg()]


def start_run(argv: list[str] | None = None) -> dict:
    """The provenance of a benchmark run, taken at its start; `write_results` completes it (load after, wall time).

    `argv`: the arguments the script was given (default `sys.argv[1:]`), recorded as the command that reproduces it.
    """
    script = Path(sys.argv[0]).resolve()
    script = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return {
        "command": " ".join(["python", str(script), *(sys.argv[1:] if argv is None else argv)]),
        **code_state(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "load_before": load_average(),
        "started": time.time(),
    }


def finish_run(run: dict) -> dict:
    """`run` (from `start_run`) with the machine as the run ended (torch threads as the benchmark set them), the load
    average after and the wall time in seconds."""
    finished = {key: value for key, value in run.items() if key != "started"}
    finished["machine"] = machine()  # torch threads as the benchmark set them
    finished["load_after"] = load_average()
    finished["wall_seconds"] = round(time.time() - run["started"], 1)
    return finished


def provenance_lines(provenance: dict) -> list[str]:
    """The markdown lines that close a results file: how to rerun it, on what code, machine and load."""
    machine_ = provenance["machine"]
    versions_ = provenance["versions"]
    commit = provenance["commit"][:12] + (
        f" with uncommitted changes to {', '.join(provenance['uncommitted_files'])}" if provenance["dirty"] else ""
    )
    gpu = f", GPU {machine_['gpu']}" if machine_["gpu"] else ""
    busiest = max(provenance["load_before"][0], provenance["load_after"][0])
    shared = (
        f" (above {machine_['cpu_count']}: the cores were shared with other jobs and wall times are inflated)"
        if busiest > machine_["cpu_count"]
        else ""
    )
    return [
        f"Command: `{provenance['command']}`  ",
        f"Commit: {commit}  ",
        f"Date: {provenance['date']}; wall time {provenance['wall_seconds']:.0f} s  ",
        (
            f"Machine: {machine_['cpu']} ({machine_['architecture']}), {machine_['cpu_count']} cores, "
            f"{machine_['torch_threads']} torch threads{gpu}, {machine_['os']}; load average (1/5/15 min) "
            f"{provenance['load_before']} before, {provenance['load_after']} after{shared}  "
        ),
        "Versions: " + ", ".join(f"{name} {value}" for name, value in versions_.items() if value) + "  ",
    ]


def write_results(
    name: str, title: str, body: str, data: dict, run: dict, headline: str | None = None, results_dir: Path = RESULTS
) -> Path:
    """Writes `results_dir/<name>.md` (title, headline table, body, provenance) and `<name>.json` (provenance,
    headline, data) whole, each through a temporary file, and returns the markdown path.

    `data` must be JSON-serialisable; `headline` is a markdown table, the part `scripts/readme_tables.py` copies."""
    provenance = finish_run(run)
    sections = [title, ""]
    if headline is not None:
        sections += [HEADLINE_START, headline.strip(), HEADLINE_END, ""]
    sections += [body.strip(), "", "## Provenance", "", *provenance_lines(provenance)]
    payload = {"provenance": provenance, "headline": headline, **data}
    results_dir.mkdir(parents=True, exist_ok=True)
    markdown = results_dir / f"{name}.md"
    for path, text in ((markdown, "\n".join(sections) + "\n"), (markdown.with_suffix(".json"), None)):
        text = text if text is not None else json.dumps(payload, indent=2) + "\n"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
    return markdown


def headline_of(markdown: str) -> str:
    """The headline table between the markers `write_results` puts around it."""
    start, end = markdown.find(HEADLINE_START), markdown.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ValueError(f"no {HEADLINE_START} ... {HEADLINE_END} block: was the file written by write_results?")
    return markdown[start + len(HEADLINE_START) : end].strip()


# ---------------------------------------------------------------------------------------------------- memory


def proc_status_kib(field: str) -> int:
    """A `/proc/self/status` field in KiB (e.g. "VmRSS", "VmHWM"; Linux)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_rss_above(fn, *args):
    """Runs `fn(*args)`; returns its result, its wall time in seconds and the peak resident memory above the level
    before it, in bytes (the kernel's high-water mark, reset through /proc/self/clear_refs; Linux >= 4.0)."""
    gc.collect()
    before = proc_status_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    started = time.perf_counter()
    result = fn(*args)
    elapsed = time.perf_counter() - started
    return result, elapsed, proc_status_kib("VmHWM") * 1024 - before


# ---------------------------------------------------------------------------------------------------- models


def mid_size_config(image_size: int, **overrides):
    """A random mid-size STORM config: a SigLIP-base-shaped tower (hidden 768, 12 layers, patch 16) at `image_size`
    px, the default Mamba projector, a Qwen2-0.5B-shaped language model (hidden 896, 24 layers, 14/2 heads, vocab
    151936) that never stops early (no EOS), so every `generate` call produces exactly `max_new_tokens`."""
    from storm_hf import StormConfig

    return StormConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=image_size,
            patch_size=PATCH_SIZE,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            pad_token_id=PAD_TOKEN_ID,
            bos_token_id=None,
            eos_token_id=None,
        ),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        **overrides,
    )


# ---------------------------------------------------------------------------------------------------- videos


def moving_bar_frame(index: int, height: int, width: int | None = None) -> np.ndarray:
    """Frame `index` `(height, width, 3)` uint8 of a test video in which no two nearby frames are equal: a colour that
    drifts with the index and a white bar at column `3 * index`."""
    width = width or height
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = ((index * np.array([7, 13, 29])) % 256).astype(np.uint8)
    frame[:, (3 * index) % width] = 255
    return frame


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
) -> Path:
    """Encodes `frames` (an iterable of `(H, W, 3)` uint8 arrays, consumed once: an hour-long video never sits in
    memory) to `path` with PyAV; written to a temporary name first, so an interrupted run leaves no partial video."""
    import av

    frames = iter(frames)
    first = next(frames)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    with av.open(str(partial), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        stream.time_base = fractions.Fraction(1, fps)
        stream.options = dict(options or {})
        for array in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.replace(path)
    return path
