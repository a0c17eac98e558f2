"""Hostile video inputs, built at test time, through every entry point: the decoder (`read_video`), the video processor,
the processor's `apply_chat_template`, the pipeline, streaming (`iter_video_frames`), `storm-hf generate` and
`storm-hf stream`.

Each case must end within its deadline with the named error, and open nothing but the input itself: a "secret" file
that playlists and concat scripts name is a FIFO whose writer records whether anyone opened it, and an "internal"
HTTP server on 127.0.0.1 records every request it gets. Positive cases (a trusted server, data: URLs, file:// URLs)
check that the same machinery reads real videos exactly. Peak memory for pixel bombs is measured in a subprocess.
"""

import base64
import contextlib
import fractions
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from http_servers import http_server
from media import make_frames, make_processor, write_video
from modeling_utils import tiny_model_for
from PIL import Image
from transformers import AutoVideoProcessor

from storm_hf.commands import main
from storm_hf.hub import save_checkpoint
from storm_hf.processing import (
    ByteBudgetError,
    DeadlineExceededError,
    FormatRefusedError,
    FrameCountBudgetError,
    FramePixelBudgetError,
    ImageNotVideoError,
    MissingTimestampsError,
    NotARegularFileError,
    PrivateAddressError,
    StormVideoProcessor,
    TooManyRedirectsError,
    VideoDecodingError,
    VideoIntakePolicy,
    VideoSourceRefusedError,
    iter_video_frames,
    read_video,
)


CASE_TIME_LIMIT_S = 10  # every case ends well within this (deadline cases use deadline_s=1.5)
TRUSTED_HOST = "127.0.0.2"  # the "public" test server; 127.0.0.1 is the internal one, never trusted here
PROCESSOR = make_processor(num_frames=2)


# ---------------------------------------------------------------- witnesses: a watched file and an internal server


class OpenWatch:
    """A FIFO at `path` whose writer thread records in `opened` whether anyone opened the path for reading (an open of
    a FIFO for writing blocks until a reader opens it)."""

    def __init__(self, path: Path):
        self.path, self.done, self.opened = path, False, False
        os.mkfifo(path)
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self):
        descriptor = os.open(self.path, os.O_WRONLY)
        self.opened = not self.done
        os.close(descriptor)

    def close(self):
        self.done = True
        descriptor = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer
        self.thread.join(timeout=5)
        os.close(descriptor)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /video.mp4 (a real video), /redirect-internal (302 to the internal server), /redirect-file (302 to a
    file:// URL), /loop (302 to itself),
    /endless (a body without end), /trickle (188 bytes every 0.2 s), /trickle-headers (a header one byte every 0.05 s),
    /huge (Content-Length of 1 TB)."""

    def do_GET(self):
        server = self.server
        server.log.append(self.path)
        if self.path == "/redirect-internal":
            self._redirect(f"{server.internal_url}/video.mp4")
        elif self.path == "/redirect-file":
            self._redirect("file:///etc/passwd")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif self.path == "/trickle-headers":
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(400):  # bounded: 20 s of header
                    self.wfile.write(b"a")
                    time.sleep(0.05)
        elif self.path in ("/endless", "/trickle"):
            self.send_response(200)
            self.end_headers()
            chunk, pause = (bytes(1 << 16), 0) if self.path == "/endless" else (bytes(188), 0.2)
            with contextlib.suppress(OSError):
                for _ in range(100 if pause else 20_000):  # bounded: 20 s of trickle, 1.3 GB of endless body
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(pause)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.video)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(server.video)

    def _redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# ---------------------------------------------------------------- hostile files


def png_bytes(width: int, height: int) -> bytes:
    """A 1-bit grey PNG of `width` x `height` zeros: a few kilobytes that decode to width x height pixels."""
    rows = zlib.compress(bytes(((width + 7) // 8 + 1) * height), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def write_pixel_bomb(path: Path, side: int = 16000, header: tuple[int, int] | None = None, frames: int = 10) -> Path:
    """An AVI of `frames` PNG frames of `side` x `side` pixels (~100 KB; 768 MB per frame as RGB); `header` writes
    another frame size into the stream header (a header that lies)."""
    data = png_bytes(side, side)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height = header or (side, side)
        stream.pix_fmt = "monob"
        for index in range(frames):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base, packet.is_keyframe = fractions.Fraction(1, 1), True
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("intake")
    given = write_video(directory / "given.mp4", make_frames(8))
    raw_h264 = write_video(directory / "clip.h264", make_frames(8))  # FFmpeg's raw h264 muxer: no container
    text = directory / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 50)
    return {
        "directory": directory,
        "given": given,
        "raw_h264": raw_h264,
        "text": text,
        "bomb": write_pixel_bomb(directory / "bomb.avi"),
        "lying_bomb": write_pixel_bomb(directory / "lying_bomb.avi", header=(64, 48)),
        "many_frames": write_video(directory / "many_frames.mp4", make_frames(60, 16, 16), fps=10),
    }


@pytest.fixture
def secret(tmp_path):
    watch = OpenWatch(tmp_path / "secret.mp4")
    yield watch
    watch.close()


@pytest.fixture(scope="module")
def internal(media):
    with http_server(_Handler, video=media["given"].read_bytes(), internal_url="", log=[]) as server:
        yield server


@pytest.fixture(scope="module")
def trusted(media, internal):
    video = media["given"].read_bytes()
    with http_server(_Handler, TRUSTED_HOST, video=video, internal_url=internal.url, log=[]) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_logs(request):
    for name in ("internal", "trusted"):
        if name in request.fixturenames:
            request.getfixturevalue(name).log.clear()


# ---------------------------------------------------------------- the cases

TRUST = VideoIntakePolicy(trusted_hosts=(TRUSTED_HOST,), read_timeout_s=5)


def hostile_cases():
    """name -> builder(media, secret, internal, trusted, tmp_path) -> (source, policy, error class, message part)."""

    def playlist(lines: str, name: str):
        def build(media, secret, internal, trusted, tmp_path):
            path = tmp_path / name
            path.write_text(lines.format(secret=secret.path, internal=internal.url))
            return str(path), None, FormatRefusedError, "playlist" if "M3U" in lines else "ffconcat"

        return build

    def source(text: str, error, message: str, policy=None):
        def build(media, secret, internal, trusted, tmp_path):
            return (
                text.format(
                    secret=secret.path,
                    internal=internal.url,
                    internal_tcp=internal.url.replace("http", "tcp"),
                    trusted=trusted.url,
                    **media,
                ),
                policy,
                error,
                message,
            )

        return build

    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n"
    return {
        "hls playlist -> local file": playlist(hls, "list.m3u8"),
        "hls playlist named .mp4": playlist(hls, "list.mp4"),
        "hls playlist -> internal server": playlist(hls.replace("{secret}", "{internal}/segment.ts"), "list.m3u8"),
        "ffconcat script named .mp4": playlist("ffconcat version 1.0\nfile '{secret}'\n", "concat.mp4"),
        "concat: protocol": source("concat:{secret}|{given}", VideoSourceRefusedError, "'concat:'"),
        "subfile: protocol": source("subfile:,start,0,end,0,:{secret}", VideoSourceRefusedError, "'subfile:'"),
        "async: protocol": source("async:file:{secret}", VideoSourceRefusedError, "'async:'"),
        "cache: protocol": source("cache:file:{secret}", VideoSourceRefusedError, "'cache:'"),
        "tcp url": source("{internal_tcp}", VideoSourceRefusedError, "live tcp URL"),
        "rtmp url": source("rtmp://127.0.0.1:1/live", VideoSourceRefusedError, "live rtmp URL"),
        "ftp url": source("ftp://127.0.0.1:1/video.mp4", VideoSourceRefusedError, "'ftp:'"),
        "gopher url": source("gopher://127.0.0.1:1/video.mp4", VideoSourceRefusedError, "'gopher:'"),
        "http internal address": source("{internal}/video.mp4", PrivateAddressError, "(127.0.0.1)"),
        "http localhost": source("{internal}/video.mp4".replace("127.0.0.1", "localhost"), PrivateAddressError, ""),
        "http integer address": source(
            "{internal}/video.mp4".replace("127.0.0.1", "2130706433"), PrivateAddressError, "(127.0.0.1)"
        ),
        "http ipv6 loopback": source("http://[::1]:1/video.mp4", PrivateAddressError, "(::1)"),
        "http ipv4-mapped ipv6": source("http://[::ffff:127.0.0.1]:1/video.mp4", PrivateAddressError, ""),
        "cloud metadata": source("http://169.254.169.254/latest/meta-data/", PrivateAddressError, "169.254.169.254"),
        "private network": source("http://10.0.0.1:1/video.mp4", PrivateAddressError, "10.0.0.1"),
        "redirect to internal": source("{trusted}/redirect-internal", PrivateAddressError, "(127.0.0.1)", TRUST),
        "redirect to a local file": source(
            "{trusted}/redirect-file", VideoSourceRefusedError, "not an http(s) URL", TRUST
        ),
        "redirect loop": source(
            "{trusted}/loop", TooManyRedirectsError, "more than 2 times", TRUST.replace(max_redirects=2)
        ),
        "endless body": source(
            "{trusted}/endless", ByteBudgetError, "2000000 bytes", TRUST.replace(max_bytes=2_000_000)
        ),
        "huge content length": source("{trusted}/huge", ByteBudgetError, "byte budget", TRUST),
        "trickling body": source("{trusted}/trickle", DeadlineExceededError, "1.5s", TRUST.replace(deadline_s=1.5)),
        "trickling headers": source(
            "{trusted}/trickle-headers", DeadlineExceededError, "1.5s", TRUST.replace(deadline_s=1.5)
        ),
        "fifo": source("{secret}", NotARegularFileError, "FIFO"),
        "device": source("/dev/zero", NotARegularFileError, "a device"),
        "kernel pseudo-file": source("/proc/self/environ", FormatRefusedError, "is empty (0 bytes)"),
        "directory": source("{directory}", IsADirectoryError, "is a directory"),
        "text file": source("{text}", FormatRefusedError, "text file"),
        "pixel bomb": source("{bomb}", FramePixelBudgetError, "16000x16000"),
        "pixel bomb, header lies": source("{lying_bomb}", FramePixelBudgetError, "16000x16000"),
        "frame-count bomb": source(
            "{many_frames}", FrameCountBudgetError, "budget of 20 frames", VideoIntakePolicy(max_decoded_frames=20)
        ),
        "raw h264": source("{raw_h264}", MissingTimestampsError, "elementary stream"),
        "data: url over budget": source(
            "data:video/mp4;base64," + "A" * 4000, ByteBudgetError, "byte budget", VideoIntakePolicy(max_bytes=1000)
        ),
        "file:// on another host": source("file://fileserver/share/video.mp4", VideoSourceRefusedError, "another host"),
        "local file refused by policy": source(
            "{given}", VideoSourceRefusedError, "allow_local_files", VideoIntakePolicy(allow_local_files=False)
        ),
        "file:// refused by policy": source(
            "file://{given}", VideoSourceRefusedError, "allow_local_files", VideoIntakePolicy(allow_local_files=False)
        ),
        "http refused by policy": source(
            "{trusted}/video.mp4", VideoSourceRefusedError, "allow_http", TRUST.replace(allow_http=False)
        ),
    }


CASES = hostile_cases()


def via_decoder(source, policy):
    read_video(source, policy=policy)


def via_processor(source, policy):
    PROCESSOR.video_processor(source, do_sample_frames=False, intake_policy=policy)


def via_chat(source, policy):
    chat = [{"role": "user", "content": [{"type": "video", "video": source}, {"type": "text", "text": "What?"}]}]
    kwargs = {"do_sample_frames": False} if policy is None else {"do_sample_frames": False, "intake_policy": policy}
    PROCESSOR.apply_chat_template(chat, tokenize=True, return_dict=True, processor_kwargs=kwargs)


def via_streaming(source, policy):
    for _ in iter_video_frames(source, policy=policy):
        pass


ENTRY_POINTS = {"decoder": via_decoder, "processor": via_processor, "chat": via_chat, "streaming": via_streaming}


def assert_refused(call, source, policy, error, message, secret, internal):
    started = time.monotonic()
    with pytest.raises(error) as raised:
        call(source, policy)
    elapsed = time.monotonic() - started
    assert message in str(raised.value), str(raised.value)
    assert elapsed < CASE_TIME_LIMIT_S, f"took {elapsed:.1f}s"
    assert not secret.opened, "the secret file was opened"
    assert internal.log == [], f"the internal server was asked for {internal.log}"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_hostile_input_is_refused_by_name_in_time_without_opening_anything_else(
    case, entry_point, media, secret, internal, trusted, tmp_path
):
    source, policy, error, message = CASES[case](media, secret, internal, trusted, tmp_path)
    assert_refused(ENTRY_POINTS[entry_point], source, policy, error, message, secret, internal)


def test_the_witnesses_see_what_a_permissive_policy_opens(media, secret, internal, tmp_path):
    """Without the refusals, the playlist's nested open reaches the watched FIFO, and the URL reaches the server: the
    assertions above can fail."""
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret.path}\n#EXT-X-ENDLIST\n")
    permissive = VideoIntakePolicy(
        allowed_demuxers=VideoIntakePolicy().allowed_demuxers | {"hls"}, trusted_hosts=("127.0.0.1",), deadline_s=5
    )
    with contextlib.suppress(VideoDecodingError):
        read_video(playlist, policy=permissive)
    for _ in range(50):  # the writer thread records the open
        if secret.opened:
            break
        time.sleep(0.05)
    assert secret.opened
    read_video(f"{internal.url}/video.mp4", policy=permissive)
    assert internal.log == ["/video.mp4"]


def test_silent_live_source_ends_within_the_read_timeout():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = VideoIntakePolicy(live_protocols={"udp"}, read_timeout_s=1, deadline_s=None)
    started = time.monotonic()
    with pytest.raises(VideoDecodingError, match=f"'udp://127.0.0.1:{port}' sent no data for 1s"):
        next(iter_video_frames(f"udp://127.0.0.1:{port}", policy=policy, format="mpegts"))
    assert time.monotonic() - started < CASE_TIME_LIMIT_S


@pytest.mark.parametrize(
    "url",
    [
        "tcp://127.0.0.1:{port}?listen=0",  # FFmpeg connects: listen=0 is not listening
        "rtmp://127.0.0.1:{port}/live/key?listen=1",  # FFmpeg's rtmp reads no options from the URL: it connects
        "srt://127.0.0.1:{port}?mode=rendezvous",  # rendezvous sends to the host
    ],
)
def test_enabled_live_url_that_connects_has_its_host_checked(url):
    scheme = url.partition(":")[0]
    with socket.create_server(("127.0.0.1", 0)) as witness:
        witness.settimeout(1)
        source = url.format(port=witness.getsockname()[1])
        policy = VideoIntakePolicy(live_protocols={scheme}, read_timeout_s=1, deadline_s=5)
        with pytest.raises(PrivateAddressError, match="leads to 127.0.0.1"):
            next(iter_video_frames(source, policy=policy, format="mpegts"))
        with pytest.raises(TimeoutError):
            witness.accept()[0].close()  # nothing connected to the internal host


def test_redirects_are_checked_again_and_bounded(media, internal, trusted):
    with pytest.raises(PrivateAddressError):
        read_video(f"{trusted.url}/redirect-internal", policy=TRUST)
    assert trusted.log == ["/redirect-internal"] and internal.log == []
    trusted.log.clear()
    with pytest.raises(TooManyRedirectsError):
        read_video(f"{trusted.url}/loop", policy=TRUST.replace(max_redirects=3))
    assert trusted.log == ["/loop"] * 4  # the first request and 3 redirects, then the refusal


# ---------------------------------------------------------------- what the same machinery accepts


def test_allowed_sources_decode_exactly_like_the_file(media, trusted, internal):
    expected, _ = read_video(media["given"])
    data_url = "data:video/mp4;base64," + base64.b64encode(media["given"].read_bytes()).decode()
    for source, policy in (
        (f"{trusted.url}/video.mp4", TRUST),
        (f"{internal.url}/video.mp4", VideoIntakePolicy(trusted_hosts=("127.0.0.0/8",))),  # trusted by network
        (data_url, None),
        (f"file://{media['given']}", None),
        (media["given"].read_bytes(), None),
    ):
        frames, metadata = read_video(source, policy=policy)
        np.testing.assert_array_equal(frames, expected)
        assert metadata.total_num_frames == 8
    assert trusted.log == ["/video.mp4"] and internal.log == ["/video.mp4"]


def test_operator_policy_remote_http_only(media, trusted):
    """The example of docs/untrusted-video.md: a server that takes public http(s) URLs and nothing else."""
    policy = VideoIntakePolicy(allow_local_files=False, allow_data_urls=False, trusted_hosts=(TRUSTED_HOST,))
    assert read_video(f"{trusted.url}/video.mp4", policy=policy)[0].shape == (8, 48, 64, 3)
    for source in (str(media["given"]), f"file://{media['given']}", "data:video/mp4;base64,AAAA"):
        with pytest.raises(VideoSourceRefusedError):
            read_video(source, policy=policy)


def test_enabled_demuxer_and_live_protocol_are_opt_in(media, tmp_path):
    (tmp_path / "part.mp4").write_bytes(media["given"].read_bytes())
    script = tmp_path / "concat.txt"
    script.write_text("ffconcat version 1.0\nfile part.mp4\nfile part.mp4\n")  # FFmpeg's concat refuses absolute paths
    with pytest.raises(FormatRefusedError):
        read_video(script)
    policy = VideoIntakePolicy(allowed_demuxers=VideoIntakePolicy().allowed_demuxers | {"concat"})
    assert read_video(script, policy=policy)[0].shape[0] == 16
    with pytest.raises(ValueError, match="Unknown live protocols \\['gopher'\\]"):
        VideoIntakePolicy(live_protocols={"gopher"})
    with pytest.raises(TypeError, match="`trusted_hosts` is a collection of names, got the string '10.0.0.1'"):
        VideoIntakePolicy(trusted_hosts="10.0.0.1")  # would otherwise trust the hosts '1', '0' and '.'
    with pytest.raises(ValueError, match="`max_redirects` must be a whole number >= 0, got -1"):
        VideoIntakePolicy(max_redirects=-1)


def test_transformers_fetch_videos_hook_is_the_same_decoder(media, internal):
    frames, metadata = PROCESSOR.video_processor.fetch_videos(str(media["given"]))
    np.testing.assert_array_equal(frames, read_video(media["given"])[0])
    with pytest.raises(PrivateAddressError):
        PROCESSOR.video_processor.fetch_videos([f"{internal.url}/video.mp4"])
    assert internal.log == []


def test_processor_policy_is_settable_and_never_saved(media, tmp_path):
    strict = VideoIntakePolicy(allow_local_files=False)
    processor = StormVideoProcessor(intake_policy=strict)
    with pytest.raises(VideoSourceRefusedError, match="allow_local_files"):
        processor(str(media["given"]), num_frames=2)
    processor.save_pretrained(tmp_path)
    config_file = tmp_path / "video_preprocessor_config.json"
    config = json.loads(config_file.read_text())
    assert "intake_policy" not in config
    config["intake_policy"] = {"trusted_hosts": ["0.0.0.0/0"]}  # what a hostile checkpoint could hold
    config_file.write_text(json.dumps(config))
    with pytest.raises(TypeError, match="never loaded from a saved configuration"):
        AutoVideoProcessor.from_pretrained(tmp_path)


def test_images_and_videos_given_as_each_other_are_named(media, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(make_frames(1)[0]).save(image)
    chat = [{"role": "user", "content": [{"type": "video", "video": str(image)}, {"type": "text", "text": "What?"}]}]
    with pytest.raises(ImageNotVideoError, match="photo.png'\\) was given as a video"):
        PROCESSOR.apply_chat_template(chat, tokenize=True, return_dict=True, processor_kwargs={"num_frames": 2})
    with pytest.raises(ImageNotVideoError, match="\\(PngImageFile\\) was given as a video \\(Asked for num_frames=2"):
        PROCESSOR.video_processor([Image.open(image)], num_frames=2)  # decoded frames: a one-frame list is sampled
    with pytest.raises(ImageNotVideoError, match="photo.png' is an image"):
        read_video(image)


def test_image_entries_are_read_under_the_policy(media, internal, tmp_path):
    def image_chat(image):
        return [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": "What?"}]}]

    with pytest.raises(PrivateAddressError):
        PROCESSOR.apply_chat_template(image_chat(f"{internal.url}/photo.png"), tokenize=True, return_dict=True)
    assert internal.log == []
    with pytest.raises(FormatRefusedError, match="given.mp4' is not an image .* pass it as a video"):
        PROCESSOR.apply_chat_template(image_chat(str(media["given"])), tokenize=True, return_dict=True)
    eps = tmp_path / "drawing.eps"  # PIL would render it by running Ghostscript on it
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n")
    with pytest.raises(FormatRefusedError, match="drawing.eps' is not an image in a format the intake reads"):
        PROCESSOR.apply_chat_template(image_chat(str(eps)), tokenize=True, return_dict=True)
    photo = tmp_path / "photo.png"
    Image.fromarray(make_frames(1)[0]).save(photo)
    from_path = PROCESSOR.apply_chat_template(image_chat(str(photo)), tokenize=True, return_dict=True)
    from_image = PROCESSOR(text=PROCESSOR.image_token, images=[Image.open(photo)])
    torch.testing.assert_close(from_path["pixel_values"], from_image["pixel_values"], rtol=0, atol=0)


def test_image_pixel_bombs_are_refused_by_name(tmp_path):
    over_budget, over_pil_limit = tmp_path / "over_budget.png", tmp_path / "over_pil_limit.png"
    over_budget.write_bytes(png_bytes(5000, 5000))  # 25 M pixels: over the 16.8 M budget, under PIL's limit
    over_pil_limit.write_bytes(png_bytes(16000, 16000))  # 256 M pixels: PIL refuses it as it opens it
    with pytest.raises(FramePixelBudgetError, match="5000x5000 image, over the intake pixel budget of 16777216"):
        PROCESSOR(text=PROCESSOR.image_token, images=[str(over_budget)])
    with pytest.raises(FramePixelBudgetError, match="decompression-bomb limit .* intake pixel budget of 16777216"):
        PROCESSOR(text=PROCESSOR.image_token, images=[str(over_pil_limit)])


def test_gif_in_a_video_entry_is_decoded_as_a_video(tmp_path):
    frames = [Image.fromarray(frame) for frame in make_frames(6)]
    animated, still = tmp_path / "animated.gif", tmp_path / "still.gif"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(still)

    def video_chat(path):
        return [{"role": "user", "content": [{"type": "video", "video": str(path)}, {"type": "text", "text": "?"}]}]

    kwargs = {"tokenize": True, "return_dict": True, "processor_kwargs": {"do_sample_frames": False}}
    assert PROCESSOR.apply_chat_template(video_chat(animated), **kwargs)["video_num_frames"].tolist() == [[6]]
    with pytest.raises(ImageNotVideoError, match="still.gif' is an image \\(a single gif picture\\)"):
        PROCESSOR.apply_chat_template(video_chat(still), **kwargs)


def test_mpeg_ps_reaches_the_chat_template_whole(tmp_path):
    path = write_video(tmp_path / "clip.mpg", make_frames(12), codec="mpeg2video")
    chat = [{"role": "user", "content": [{"type": "video", "video": str(path)}, {"type": "text", "text": "What?"}]}]
    output = PROCESSOR.apply_chat_template(chat, tokenize=True, return_dict=True, processor_kwargs={"num_frames": 4})
    assert output["video_num_frames"].tolist() == [[4]]
    direct = PROCESSOR.video_processor(str(path), num_frames=4)["pixel_values_videos"]
    torch.testing.assert_close(output["pixel_values_videos"], direct, rtol=0, atol=0)


# ---------------------------------------------------------------- one decoder: streaming sees the processor's frames


def write_two_streams(path: Path) -> Path:
    """An mkv whose first video stream is a 16x16 still (a thumbnail) and whose second is the real video."""
    with av.open(str(path), "w") as container:
        streams = []
        for frames in (make_frames(1, 16, 16, seed=1), make_frames(10)):
            stream = container.add_stream("libx264", rate=10)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            streams.append((stream, frames))
        for stream, frames in streams:
            for array in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["rotated", "mirrored", "rotated and mirrored", "two streams"])
def test_streaming_returns_exactly_the_processors_frames(kind, tmp_path):
    frames = make_frames(10)
    if kind == "two streams":
        path = write_two_streams(tmp_path / "two.mkv")
    else:
        orientations = {"rotated": {"rotation": 90}, "mirrored": {"hflip": True}}
        orientation = orientations.get(kind, {"rotation": 90, "vflip": True})
        path = write_video(tmp_path / "clip.mp4", frames, **orientation)
    video_processor = StormVideoProcessor(size={"height": 28, "width": 28}, patch_size=14, downsample_ratio=2)
    for resize_frames in (video_processor.frame_resizer(), None):
        streamed = np.stack([frame for _, frame in iter_video_frames(str(path), resize_frames=resize_frames)])
        decoded, _ = read_video(path, resize_frames=resize_frames)
        np.testing.assert_array_equal(streamed, decoded)
        assert streamed.shape[0] == 10
    online = video_processor(streamed, do_sample_frames=False)["pixel_values_videos"]
    offline = video_processor(str(path), do_sample_frames=False)["pixel_values_videos"]
    torch.testing.assert_close(online, offline, rtol=0, atol=0)
    if kind == "rotated":
        assert streamed.shape[1:3] == (64, 48)  # as displayed: turned upright


def test_frames_resized_while_decoding_equal_the_processors_resize_of_whole_frames(tmp_path):
    """Resizing each frame as it is decoded changes the memory, not the pixels: a 4K video gives the processor the
    pixel values it gives for the same frames decoded whole. The defaults serve a 4K video sampled at 1 fps for an hour
    (3600 frames of 3840x2160)."""
    defaults = VideoIntakePolicy()
    assert defaults.max_frame_pixels >= 3840 * 2160 and defaults.max_decoded_frames >= 3600
    frames = np.zeros((2, 2160, 3840, 3), dtype=np.uint8)
    frames[1, :1080] = 255  # the top half white in the second frame
    path = write_video(tmp_path / "uhd.mp4", frames, options={"preset": "ultrafast"})
    video_processor = StormVideoProcessor()
    decoded, metadata = read_video(path, resize_frames=video_processor.frame_resizer())
    assert decoded.shape == (2, 448, 448, 3) and (metadata.height, metadata.width) == (2160, 3840)
    whole, _ = read_video(path)
    from_file = video_processor(str(path), do_sample_frames=False)["pixel_values_videos"]
    from_whole_frames = video_processor(whole, do_sample_frames=False)["pixel_values_videos"]
    torch.testing.assert_close(from_file, from_whole_frames, rtol=0, atol=0)


def test_resizing_in_batches_of_any_size_and_after_the_in_order_fallback_gives_the_same_frames(media, monkeypatch):
    from storm_hf.processing import video_decoding

    resize_frames = StormVideoProcessor(size={"height": 28, "width": 28}).frame_resizer()
    expected = resize_frames(read_video(media["given"])[0])
    for batch_bytes in (1, 2 * 48 * 64 * 3, 2**30):  # every frame alone, pairs, all at once
        monkeypatch.setattr(video_decoding, "_RESIZE_BATCH_BYTES", batch_bytes)
        np.testing.assert_array_equal(read_video(media["given"], resize_frames=resize_frames)[0], expected)

    def seek_misses_after_two_frames(reader, wanted):
        frames = {}
        for position, frame in enumerate(av.open(str(media["given"])).decode(video=0)):
            if position < 2:
                reader._keep(frames, frame.pts, frame)
        raise video_decoding._SeekMissed

    monkeypatch.setattr(video_decoding._FrameReader, "_by_seeking", seek_misses_after_two_frames)
    np.testing.assert_array_equal(read_video(media["given"], resize_frames=resize_frames)[0], expected)


# ---------------------------------------------------------------- memory of pixel bombs, in a fresh process

MEMORY_SCRIPT = """
import resource, sys
from storm_hf.processing import StormVideoProcessor, VideoDecodingError, read_video
processor = StormVideoProcessor()
processor(sys.argv[3], num_frames=2)  # warm up: imports and the decoder's first allocations
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:3]:
    for decode in (lambda: read_video(path), lambda: processor(path, num_frames=4)):
        try:
            decode()
        except VideoDecodingError as error:
            print(type(error).__name__)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) // 1024)  # MiB (Linux reports KiB)
"""


def test_pixel_bombs_stay_within_bounded_memory(media):
    paths = [str(media["bomb"]), str(media["lying_bomb"]), str(media["given"])]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, *paths], capture_output=True, text=True, timeout=300, check=True
    )
    *errors, growth_mib = result.stdout.split()
    assert errors == ["FramePixelBudgetError"] * 4, result.stdout + result.stderr
    assert int(growth_mib) < 1536, f"peak RSS grew by {growth_mib} MiB"


@pytest.mark.parametrize("entry_point", ["decoder", "processor", "chat"])
def test_a_video_of_more_frames_than_the_index_budget_is_refused_before_it_is_indexed(entry_point, media):
    """Sampling 4 frames stays within `max_decoded_frames`; the 60 frames the file holds are over the index budget."""
    policy = VideoIntakePolicy(max_indexed_frames=59)
    with pytest.raises(FrameCountBudgetError, match="more than 59 frames.*max_indexed_frames"):
        ENTRY_POINTS[entry_point](str(media["many_frames"]), policy)
    frames, _ = read_video(str(media["many_frames"]), policy=policy.replace(max_indexed_frames=60))
    assert len(frames) == 60


IMAGE_FILES_MEMORY_SCRIPT = """
import resource, sys
from storm_hf.processing import StormVideoProcessor
processor = StormVideoProcessor()
processor(sys.argv[1:3], do_sample_frames=False)  # warm up
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
processor(sys.argv[1:], do_sample_frames=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) // 1024)  # MiB (Linux reports KiB)
"""


def test_a_video_of_image_files_is_read_within_the_frame_budget_and_resized_as_read(tmp_path):
    frame = tmp_path / "frame.png"
    frame.write_bytes(png_bytes(3000, 3000))  # 26 MiB per frame as RGB, within the pixel budget
    with pytest.raises(FrameCountBudgetError, match="the video of 5 image files would return 5 frames, over .* of 4"):
        PROCESSOR.video_processor([str(frame)] * 5, do_sample_frames=False, intake_policy=VIDEO_BUDGET_OF_4)
    result = subprocess.run(
        [sys.executable, "-c", IMAGE_FILES_MEMORY_SCRIPT, *[str(frame)] * 12],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # measured: 37 MiB; 574 MiB when the frames were kept at their size until the whole list was read
    assert int(result.stdout) < 200, f"peak RSS grew by {result.stdout.strip()} MiB for 12 frames"


VIDEO_BUDGET_OF_4 = VideoIntakePolicy(max_decoded_frames=4)


# ---------------------------------------------------------------- the pipeline and the commands


@pytest.fixture(scope="module")
def model():
    return tiny_model_for(PROCESSOR, temporal_pool_size=2, mamba_bidirectional=False)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(model, PROCESSOR, folder)
    return folder


COMMAND_CASES = ["hls playlist -> local file", "http internal address", "fifo", "pixel bomb", "concat: protocol"]


def test_pipeline_refuses_like_the_processor(model, media, secret, internal, trusted, tmp_path):
    from transformers import pipeline

    pipe = pipeline("video-text-to-text", model=model, processor=PROCESSOR)
    for case in COMMAND_CASES:
        source, policy, error, message = CASES[case](media, secret, internal, trusted, tmp_path)
        assert_refused(lambda source, policy: pipe(source, text="What?", max_new_tokens=1), source, policy, error,
                       message, secret, internal)  # fmt: skip


@pytest.mark.parametrize("command", ["generate", "stream"])
def test_commands_refuse_by_name_without_opening_anything_else(
    command, checkpoint, media, secret, internal, trusted, tmp_path, capsys
):
    extra = ["--every", "1"] if command == "stream" else ["--max-new-tokens", "1", "--no-progress"]
    for case in COMMAND_CASES:
        source, _, _, message = CASES[case](media, secret, internal, trusted, tmp_path)
        started = time.monotonic()
        status = main([command, "--model", str(checkpoint), "--video", source, "--prompt", "What?", *extra])
        assert status == 1, case
        assert message in capsys.readouterr().err, case
        assert time.monotonic() - started < CASE_TIME_LIMIT_S + 20, case  # + loading the model
    assert not secret.opened and internal.log == []
    with pytest.raises(SystemExit):
        main([command, "--model", str(checkpoint), "--video", str(media["directory"]), "--prompt", "What?", *extra])
    assert "is a directory, not a video file" in capsys.readouterr().err


def test_stream_command_reads_a_live_tcp_source(checkpoint, media, capsys):
    """The documented live protocols stay open to `storm-hf stream`: a loopback TCP listener, fed an mpegts stream."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def feed():
        for _ in range(200):  # until the command listens
            try:
                with socket.create_connection(("127.0.0.1", port)) as connection:
                    with av.open(connection.makefile("wb"), "w", format="mpegts") as container:
                        stream = container.add_stream("libx264", rate=10)
                        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
                        for array in make_frames(6):
                            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                                container.mux(packet)
                        for packet in stream.encode():
                            container.mux(packet)
                    return
            except ConnectionRefusedError:
                time.sleep(0.05)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    url = f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=20000"
    argv = ["stream", "--model", str(checkpoint), "--video", url, "--prompt", "What?", "--every", "1", "--format",
            "mpegts", "--max-new-tokens", "1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    writer.join(timeout=30)
    assert capsys.readouterr().out.startswith("[")
