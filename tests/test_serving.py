"""STORM behind `transformers serve`, talked to with the `openai` client.

The server is transformers' own command line, unmodified, started in a subprocess where `import storm_hf` fails, on a
self-contained copy of the bundled demo checkpoint (`save_checkpoint`: config `auto_map` + the code); the videos come
from a local http server without range requests (allowed for the test by the operator's intake policy,
`$STORM_VIDEO_INTAKE_POLICY`, which also refuses local files) and as `data:` URLs. The demo model answers the task's
`direction` question, which only the order of the frames decides: a clip and the same frames reversed must get the
two right answers. Every request and every wait is bounded; the servers are killed in teardown.
"""

import base64
import concurrent.futures
import contextlib
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from http_servers import http_server
from transformers import AutoProcessor

from storm_hf.hub import save_checkpoint
from storm_hf.synthetic.demo import answer, load
from storm_hf.synthetic.render import QUESTIONS, sample_scene, write_video


QUESTION = QUESTIONS["direction"]
START_TIMEOUT_S = 300  # loading torch, transformers and the model on a busy 2-core machine
REQUEST_TIMEOUT_S = 120
# transformers' own CLI where `import storm_hf` fails (a user without storm_hf).
WITHOUT_STORM_HF = str(Path(__file__).resolve().parents[1] / "scripts" / "transformers_without_storm_hf.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `transformers serve` subprocess on 127.0.0.1 and an `openai` client for it."""

    def __init__(self, command: list[str], model: str, log: Path, env: dict[str, str]):
        self.port = free_port()
        self.model, self.log = model, log
        self.base_url = f"http://127.0.0.1:{self.port}"
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            )
        self.client = openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S, max_retries=0
        )
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"the server exited with status {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self.health() == 200:
                    return
            time.sleep(1)
        self.stop()
        pytest.fail(f"the server did not answer /health within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def health(self) -> int:
        with urllib.request.urlopen(f"{self.base_url}/health", timeout=10) as response:
            return response.status

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def ask(self, video_url: str, stream: bool = False, **chat_template_kwargs):
        """The chat completion (or the streamed text) of the direction question about `video_url`."""
        content = [{"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": QUESTION}]
        completion = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": content}],
            max_tokens=3,
            temperature=0,
            stream=stream,
            extra_body={"chat_template_kwargs": chat_template_kwargs} if chat_template_kwargs else None,
        )
        if stream:
            return "".join(chunk.choices[0].delta.content or "" for chunk in completion if chunk.choices)
        return completion

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A direction scene as two 32-frame clips (8 fps), the second the first's frames reversed, and a 16-frame clip."""
    folder = tmp_path_factory.mktemp("videos")
    scene = sample_scene("direction", np.random.default_rng(7), num_frames=32)
    clips = {}
    for variant, expected in enumerate(scene.answers):
        write_video(folder / f"{expected}.mp4", scene.frames(variant))
        clips[expected] = folder / f"{expected}.mp4"
    write_video(folder / "short.mp4", sample_scene("direction", np.random.default_rng(8), num_frames=16).frames(0))
    (folder / "notes.txt").write_text("not a video\n" * 100)
    assert sorted(clips) == ["left", "right"]
    return folder, clips


@pytest.fixture(scope="module")
def video_host(clips):
    """`clips`' folder served over http on 127.0.0.1 without range requests: the clips' mp4 index (moov) is written
    after the frames, so the server must read each file whole."""
    folder, _ = clips

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with http_server(functools.partial(Handler, directory=folder)) as server:
        yield server.url


@pytest.fixture(scope="module")
def reference(demo_checkpoint, clips):
    """The demo model's answers in this process (`generate`), per clip."""
    model, processor = load(demo_checkpoint)
    return {name: answer(model, processor, path, QUESTION) for name, path in clips[1].items()}


@pytest.fixture(scope="module")
def self_contained_checkpoint(demo_checkpoint, tmp_path_factory):
    model, processor = load(demo_checkpoint)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("served") / "storm-demo")


@pytest.fixture(scope="module")
def server(self_contained_checkpoint, tmp_path_factory):
    """`transformers serve CHECKPOINT --trust-remote-code`, storm_hf not importable; the operator's policy allows the
    test's http host and no local files."""
    folder = tmp_path_factory.mktemp("server")
    policy = {"allow_local_files": False, "trusted_hosts": ["127.0.0.1"]}
    command = [sys.executable, WITHOUT_STORM_HF, "serve", str(self_contained_checkpoint), "--trust-remote-code"]
    env = {"HF_MODULES_CACHE": str(folder / "modules"), "STORM_VIDEO_INTAKE_POLICY": json.dumps(policy)}
    server = Server(command, str(self_contained_checkpoint), folder / "server.log", env)
    yield server
    server.stop()


def data_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def test_every_save_maps_both_auto_classes_the_server_loads_with(self_contained_checkpoint):
    auto_map = json.loads((self_contained_checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForMultimodalLM"] == auto_map["AutoModelForImageTextToText"]
    assert auto_map["AutoModelForMultimodalLM"] == "modeling_storm.StormForConditionalGeneration"
    assert (self_contained_checkpoint / "modeling_storm.py").is_file()
    assert (
        "transformers serve path/to/checkpoint --trust-remote-code"
        in (self_contained_checkpoint / "README.md").read_text()
    )


def test_a_plain_save_pretrained_maps_them_too(demo_checkpoint, tmp_path):
    """What a `Trainer` save writes: `save_pretrained` of a model loaded after `import storm_hf`."""
    model, _ = load(demo_checkpoint)
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {name: auto_map[name] for name in ("AutoModelForImageTextToText", "AutoModelForMultimodalLM")} == {
        "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_storm.StormForConditionalGeneration",
    }
    assert (tmp_path / "modeling_storm.py").is_file() and (tmp_path / "configuration_storm.py").is_file()


def test_the_environment_policy_is_the_default_of_a_processor_without_one(demo_checkpoint, clips, monkeypatch):
    from storm_hf.processing import VideoSourceRefusedError
    from storm_hf.processing.video_intake import DEFAULT_POLICY, environment_policy

    processor = AutoProcessor.from_pretrained(demo_checkpoint)
    video = str(clips[1]["left"])
    monkeypatch.delenv("STORM_VIDEO_INTAKE_POLICY", raising=False)
    assert environment_policy() == DEFAULT_POLICY
    assert processor.video_processor(video)["video_num_frames"].tolist() == [32]

    monkeypatch.setenv("STORM_VIDEO_INTAKE_POLICY", '{"allow_local_files": false, "trusted_hosts": ["10.0.0.0/8"]}')
    assert environment_policy() == DEFAULT_POLICY.replace(allow_local_files=False, trusted_hosts=("10.0.0.0/8",))
    with pytest.raises(VideoSourceRefusedError, match="allow_local_files"):
        processor.video_processor(video)
    policy = DEFAULT_POLICY.replace(allow_local_files=True)  # a policy set in code wins
    assert processor.video_processor(video, intake_policy=policy)["video_num_frames"].tolist() == [32]

    for value, message in (("{", "is not JSON"), ('{"allow_files": true}', "got allow_files"), ("[]", "got list")):
        monkeypatch.setenv("STORM_VIDEO_INTAKE_POLICY", value)
        with pytest.raises(ValueError, match=rf"\$STORM_VIDEO_INTAKE_POLICY .*{message}"):
            environment_policy()


def test_answers_follow_the_order_of_the_frames(server, video_host, reference):
    """The unmodified server, without storm_hf, answers the clip and its reverse as the model does in-process, and
    right."""
    answers = {name: server.ask(f"{video_host}/{name}.mp4").choices[0].message.content.strip() for name in reference}
    assert answers == reference == {"left": "left", "right": "right"}


def test_data_urls_and_streaming(server, clips):
    _, paths = clips
    assert server.ask(data_url(paths["left"]), stream=True).strip() == "left"
    assert server.ask(data_url(paths["right"])).choices[0].message.content.strip() == "right"


def test_four_concurrent_clients_each_get_their_own_answer(server, video_host):
    names = ["left", "right", "right", "left"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        completions = list(pool.map(lambda name: server.ask(f"{video_host}/{name}.mp4"), names))
    assert [completion.choices[0].message.content.strip() for completion in completions] == names


def test_per_request_settings_and_their_precedence_over_the_servers_frame_count(server, video_host):
    """The demo model turns 4 frames into 1 visual token (temporal pooling 4, one token per 32 px frame): a request's
    prompt tokens count its frames. The server adds `num_frames=32` to every video request."""
    url = f"{video_host}/right.mp4"  # 32 frames at 8 fps

    def prompt_tokens(url, **settings) -> int:
        return server.ask(url, **settings).usage.prompt_tokens

    text_tokens = prompt_tokens(url) - 32 // 4
    visual_tokens = {
        "fps 4 (16 of 32 frames), over the server's 32": prompt_tokens(url, fps=4) - text_tokens,
        "budget of 3 tokens (12 frames), over the server's 32": prompt_tokens(url, max_visual_tokens=3) - text_tokens,
        "num_frames 8": prompt_tokens(url, num_frames=8) - text_tokens,
        "16 frames at stride 2": prompt_tokens(url, num_frames=16, temporal_sampling_stride=2) - text_tokens,
        "num_frames null: the server's 32, not every frame": prompt_tokens(url, num_frames=None) - text_tokens,
        "a 16-frame clip, under the server's 32": prompt_tokens(f"{video_host}/short.mp4") - text_tokens,
    }
    assert visual_tokens == {
        "fps 4 (16 of 32 frames), over the server's 32": 4,
        "budget of 3 tokens (12 frames), over the server's 32": 3,
        "num_frames 8": 2,
        "16 frames at stride 2": 2,
        "num_frames null: the server's 32, not every frame": 8,
        "a 16-frame clip, under the server's 32": 4,
    }


@pytest.mark.parametrize(
    "video, settings",
    [
        ("{host}/notes.txt", {}),  # not a video
        ("{host}/missing.mp4", {}),  # 404
        ("file://{folder}/right.mp4", {}),  # a local file: the operator's policy refuses them
        ("{folder}/right.mp4", {}),
        ("{host}/right.mp4", {"fps": -1}),
        ("{host}/right.mp4", {"temporal_sampling_stride": 0}),
        ("{host}/right.mp4", {"max_visual_tokens": "many"}),
    ],
)
def test_bad_requests_get_an_error_not_a_hang(server, video_host, clips, video, settings):
    """transformers' server answers a failing request with a plain 500; then it serves the next request."""
    url = video.format(host=video_host, folder=clips[0])
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as error:
        server.ask(url, **settings)
    assert error.value.status_code >= 400 and time.monotonic() - started < REQUEST_TIMEOUT_S
    assert server.health() == 200
    assert server.ask(f"{video_host}/left.mp4").choices[0].message.content.strip() == "left"


def test_storm_hf_serve_serves_the_bundled_checkpoint_without_auto_map(demo_checkpoint, video_host, tmp_path):
    assert "auto_map" not in json.loads((demo_checkpoint / "config.json").read_text())
    command = [sys.executable, "-m", "storm_hf.commands", "serve", str(demo_checkpoint)]
    policy = json.dumps({"trusted_hosts": ["127.0.0.1"]})
    server = Server(command, str(demo_checkpoint), tmp_path / "server.log", {"STORM_VIDEO_INTAKE_POLICY": policy})
    try:
        answers = [
            server.ask(f"{video_host}/{name}.mp4").choices[0].message.content.strip() for name in ("left", "right")
        ]
    finally:
        server.stop()
    assert answers == ["left", "right"]


def test_storm_hf_serve_takes_the_options_of_transformers_serve(capsys):
    from storm_hf.commands import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--trust-remote-code" in out and "--chat-template-kwargs" in out and "--continuous-batching" in out
