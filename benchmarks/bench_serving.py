"""STORM behind `transformers serve`: throughput and latency with concurrent OpenAI clients, against `generate`.

The server is transformers' own `transformers serve`, unmodified, on a self-contained copy of the bundled demo
checkpoint (`save_checkpoint`), in a process where storm_hf cannot be imported; clients are `openai` clients in
threads of this process, asking the demo's `direction` question about clips served over http from 127.0.0.1. Measured:

1. 32- and 128-frame clips (the request's `num_frames`), 1, 4 and 16 concurrent clients: requests/s, p50/p95 latency;
   against the same requests answered in this process by `apply_chat_template` + `generate`, one after another (the
   serving overhead, as a ratio of latencies and of requests/s).
2. `/health` latency while the server answers a request for 256 frames of a long video (3600 frames of 640x360, two
   minutes at 30 fps): transformers' chat handler decodes the video inside the server's event loop.
3. What an operator can do about 1 and 2: two server processes behind a round-robin balancer (done here by the
   clients), and `/health` of one while the other decodes the long video.

Every process (each server, and this one for `generate`) runs one torch thread: on a shared 2-core machine, more threads
than free cores make each matrix product wait for the others (`generate` of the demo model took 0.3-2 s with 2 threads
under a load of 7, 0.02-0.05 s with 1).

    python benchmarks/bench_serving.py          # ~4 min on a 2-core CPU
    python benchmarks/bench_serving.py --quick  # fewer requests, a shorter long video: checks that it runs
"""

import argparse
import concurrent.futures
import contextlib
import functools
import http.server
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from common import moving_bar_frame, start_run, write_results
from common import write_video as write_long_video

from storm_hf.hub import save_checkpoint
from storm_hf.synthetic.demo import bundled_checkpoint, load
from storm_hf.synthetic.render import QUESTIONS, sample_scene, write_video


QUESTION = QUESTIONS["direction"]
LONG_VIDEO_SAMPLED_FRAMES = 256
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300
# transformers' own CLI where `import storm_hf` fails (a user without storm_hf).
WITHOUT_STORM_HF = str(Path(__file__).resolve().parents[1] / "scripts" / "transformers_without_storm_hf.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `transformers serve CHECKPOINT --trust-remote-code` subprocess on 127.0.0.1."""

    def __init__(self, checkpoint: Path, folder: Path):
        import openai

        self.port, self.checkpoint = free_port(), str(checkpoint)
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_MODULES_CACHE": str(folder / "modules"),
            "STORM_VIDEO_INTAKE_POLICY": json.dumps({"trusted_hosts": ["127.0.0.1"]}),
            "OMP_NUM_THREADS": "1",
        }
        self.log = folder / f"server-{self.port}.log"
        command = [sys.executable, WITHOUT_STORM_HF, "serve", self.checkpoint, "--trust-remote-code"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)], stdout=log, stderr=log, env=env
            )
        self.client = openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                self.health()
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the server did not start in {START_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")

    def health(self) -> float:
        """Seconds `/health` took to answer."""
        started = time.perf_counter()
        with urllib.request.urlopen(f"{self.base_url}/health", timeout=REQUEST_TIMEOUT_S) as response:
            response.read()
        return time.perf_counter() - started

    def ask(self, video_url: str, num_frames: int) -> tuple[str, float]:
        """The answer about `video_url` from `num_frames` frames, and the request's latency in seconds."""
        started = time.perf_counter()
        completion = self.client.chat.completions.create(
            model=self.checkpoint,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": video_url}},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
            max_tokens=3,
            temperature=0,
            extra_body={"chat_template_kwargs": {"num_frames": num_frames}},
        )
        return completion.choices[0].message.content.strip(), time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@contextlib.contextmanager
def http_host(folder: Path):
    """`folder` served over http on 127.0.0.1; yields its base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def summary(results: list[tuple[str, float]], wall: float) -> dict:
    """Throughput and latency of (answer, latency in s) `results` that took `wall` seconds in all."""
    latencies = [latency for _, latency in results]
    return {
        "requests": len(results),
        "answers": sorted({text for text, _ in results}),
        "requests_per_s": len(results) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 95),
    }


def load_under(servers: list[Server], url: str, num_frames: int, clients: int, requests: int) -> dict:
    """`requests` requests from `clients` concurrent clients, spread round-robin over `servers`."""
    targets = itertools.cycle(servers)
    jobs = [next(targets) for _ in range(requests)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda server: server.ask(url, num_frames), jobs))
    return summary(results, time.perf_counter() - started)


def direct_generate(checkpoint: Path, video: Path, num_frames: int, requests: int) -> dict:
    """The same requests answered in this process, one after another: decode + process + generate."""
    model, processor = load(checkpoint)
    messages = [
        {"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": QUESTION}]}
    ]

    def one() -> tuple[str, float]:
        started = time.perf_counter()
        inputs = processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"num_frames": num_frames},
        )
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        text = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        return text, time.perf_counter() - started

    one()  # warm-up
    started = time.perf_counter()
    results = [one() for _ in range(requests)]
    return summary(results, time.perf_counter() - started)


def health_while_decoding(busy: Server, probed: Server, long_url: str) -> dict:
    """Latency of `probed`'s `/health`, polled every 50 ms while `busy` answers a request about the long video."""
    idle = statistics.median(probed.health() for _ in range(10))
    done = threading.Event()
    probes = []

    def poll():
        while not done.is_set():
            probes.append(probed.health())
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        _, request_s = busy.ask(long_url, LONG_VIDEO_SAMPLED_FRAMES)
    finally:
        done.set()
        poller.join()
    return {"idle_health_s": idle, "long_request_s": request_s, "max_health_s": max(probes), "probes": len(probes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and a shorter long video")
    args = parser.parse_args()
    torch.set_num_threads(1)  # before `start_run`, which records it
    run = start_run()

    clip_lengths, client_counts = (32, 128), (1, 4, 16)
    requests_per_client = {1: 6, 4: 4, 16: 2} if args.quick else {1: 16, 4: 8, 16: 4}
    long_frames = 600 if args.quick else 3600
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        folder = Path(folder)
        model, processor = load(bundled_checkpoint())
        checkpoint = save_checkpoint(model, processor, folder / "storm-demo")
        videos = folder / "videos"
        videos.mkdir()
        for num_frames in clip_lengths:
            scene = sample_scene("direction", np.random.default_rng(num_frames), num_frames=num_frames)
            write_video(videos / f"clip{num_frames}.mp4", scene.frames(1))  # moves right
        long_video = videos / "long.mp4"
        frames = (moving_bar_frame(index, 360, 640) for index in range(long_frames))
        write_long_video(long_video, frames, fps=30, options={"preset": "ultrafast"})
        print(f"videos written; {long_frames}-frame long video of {long_video.stat().st_size / 1e6:.1f} MB", flush=True)

        rows, direct, health = [], {}, {}
        with http_host(videos) as host:
            for num_frames in clip_lengths:
                direct[num_frames] = direct_generate(checkpoint, videos / f"clip{num_frames}.mp4", num_frames, 16)
                print(f"direct generate, {num_frames} frames: {direct[num_frames]}", flush=True)

            one = Server(checkpoint, folder)
            try:
                for num_frames in clip_lengths:
                    url = f"{host}/clip{num_frames}.mp4"
                    load_under([one], url, num_frames, 1, 2)  # warm-up
                    for clients in client_counts:
                        result = load_under([one], url, num_frames, clients, clients * requests_per_client[clients])
                        rows.append({"servers": 1, "frames": num_frames, "clients": clients, **result})
                        print(rows[-1], flush=True)
                health["one server"] = health_while_decoding(one, one, f"{host}/long.mp4")
                print(health, flush=True)
            finally:
                one.stop()

            pair = [Server(checkpoint, folder) for _ in range(2)]
            try:
                url = f"{host}/clip32.mp4"
                load_under(pair, url, 32, 2, 4)  # warm-up
                for clients in client_counts[1:]:
                    result = load_under(pair, url, 32, clients, clients * requests_per_client[clients])
                    rows.append({"servers": 2, "frames": 32, "clients": clients, **result})
                    print(rows[-1], flush=True)
                health["two servers"] = health_while_decoding(pair[0], pair[1], f"{host}/long.mp4")
                print(health, flush=True)
            finally:
                for server in pair:
                    server.stop()

    write_results(
        "serving",
        "# Serving: `transformers serve` with concurrent OpenAI clients",
        body(rows, direct, health, long_frames),
        {"rows": rows, "direct_generate": direct, "health_while_decoding": health, "long_video_frames": long_frames},
        run,
        headline=headline(rows, direct),
    )


def headline(rows: list[dict], direct: dict) -> str:
    lines = [
        "| servers | frames | clients | requests/s | p50 latency | p95 latency | `generate` in-process: requests/s, "
        "p50 | latency / `generate`'s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = direct[row["frames"]]
        lines.append(
            f"| {row['servers']} | {row['frames']} | {row['clients']} | {row['requests_per_s']:.1f} | "
            f"{1000 * row['p50_s']:.0f} ms | {1000 * row['p95_s']:.0f} ms | {base['requests_per_s']:.1f}, "
            f"{1000 * base['p50_s']:.0f} ms | x{row['p50_s'] / base['p50_s']:.1f} |"
        )
    return "\n".join(lines)


def body(rows: list[dict], direct: dict, health: dict, long_frames: int) -> str:
    answers = sorted({answer for row in rows for answer in row["answers"]})
    lines = [
        "The bundled demo checkpoint (~1M parameters, 32 px frames), saved self-contained and served by the unmodified "
        "`transformers serve --trust-remote-code` with storm_hf hidden from the server process. Clients: `openai` "
        "clients in threads of the benchmark, each asking the `direction` question about a clip fetched by the server "
        "from a local http server; `num_frames` per request (`chat_template_kwargs`). `generate` in-process: the same "
        "request (`apply_chat_template` with the file's path, then `generate`), one after another, after a warm-up. "
        "Every process runs one torch thread. Two servers: two server processes, the requests spread round-robin by "
        f"the clients. Answers seen: {answers} (every clip moves right).",
        "",
        f"`/health` while the server answers one request for {LONG_VIDEO_SAMPLED_FRAMES} frames of a "
        f"{long_frames}-frame 640x360 H.264 video (30 fps), polled every 50 ms:",
        "",
        "| setup | /health idle | the long request | slowest /health during it |",
        "|---|---|---|---|",
    ]
    for setup, result in health.items():
        probed = "the same server" if setup == "one server" else "the other server"
        lines.append(
            f"| {setup} ({probed} probed) | {1000 * result['idle_health_s']:.0f} ms | {result['long_request_s']:.2f} s "
            f"| {1000 * result['max_health_s']:.0f} ms |"
        )
    lines += [
        "",
        "Where the time goes (transformers 5.23/5.24, `transformers/cli/serving/`): "
        "`ChatCompletionHandler.handle_request` calls `processor.apply_chat_template` (fetching and decoding the "
        "video) inside the async handler, so the event loop, `/health` included, waits while a video decodes; "
        "`GenerateManager` runs every `generate` of a model on "
        "one `InferenceThread`, so requests to one model are served one at a time. Both are transformers-side. "
        "An operator runs several server processes behind a balancer (rows with 2 servers) and health-checks each.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
