"""Which video sources may be opened, and how much of one may be read: the intake policy, its named refusals, and the
bounded http(s) fetcher.

A video handed to STORM may come from someone else: a URL in a chat request, a file in a dataset, an upload to a
server. `VideoIntakePolicy` decides, before anything is opened, which kinds of source are allowed (local files, http(s),
`data:` URLs, live protocols) and which addresses a network source may reach (private, loopback, link-local and cloud
metadata addresses are refused unless trusted), and bounds the whole read (wall-clock deadline, bytes, pixels per
frame, decoded frames). `resolve_source` turns an allowed source into what FFmpeg opens: http(s) videos are fetched
here, not by FFmpeg, so that every DNS answer and every redirect is checked and the connection goes to the checked
address; they are spooled to a temporary file and decoded locally (which also reads servers without range requests).
Every refusal is a subclass of `VideoDecodingError` naming the rule and the setting that changes it.
"""

import base64
import binascii
import contextlib
import dataclasses
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass


class VideoDecodingError(ValueError):
    """A video could not be read; the message names the input and says what to do."""


class VideoSourceRefusedError(VideoDecodingError):
    """The kind of source (local file, http(s), `data:`, a live or other FFmpeg protocol) is not allowed."""


class NotARegularFileError(VideoSourceRefusedError):
    """A local path that is not a regular file (a FIFO, a device, a socket): opening it could block or never end."""


class PrivateAddressError(VideoSourceRefusedError):
    """A network source resolves to (or is redirected to) an address that is not public and not trusted."""


class TooManyRedirectsError(VideoSourceRefusedError):
    """An http(s) source redirected more often than `max_redirects`."""


class FormatRefusedError(VideoDecodingError):
    """The input is not a video container the policy accepts (a playlist, a concat script, an image, text, ...)."""


class ImageNotVideoError(FormatRefusedError):
    """An image was given where a video was expected."""


class MissingTimestampsError(VideoDecodingError):
    """A raw elementary stream (e.g. `.h264`): no container, so no frame times."""


class VideoBudgetError(VideoDecodingError):
    """Reading the video would exceed one of the policy's budgets."""


class DeadlineExceededError(VideoBudgetError):
    """Reading the video took longer than `deadline_s`."""


class ByteBudgetError(VideoBudgetError):
    """A network or `data:` source is larger than `max_bytes`."""


class FramePixelBudgetError(VideoBudgetError):
    """A frame has more pixels than `max_frame_pixels` (a decompression bomb or a huge video)."""


class FrameCountBudgetError(VideoBudgetError):
    """More frames were asked for than `max_decoded_frames`, or a video has more than `max_indexed_frames`."""


# FFmpeg demuxers of video containers and elementary video streams (names as in `container.format.name`, which lists
# the aliases of one demuxer separated by commas; FFmpeg's `format_whitelist` matches any of them). None opens another
# resource: playlists (hls, dash), concat scripts, image-sequence patterns (image2), tee and device demuxers are out.
VIDEO_DEMUXERS = frozenset({
    "mov", "mp4", "matroska", "webm", "avi", "mpegts", "mpeg", "mpegvideo", "flv", "ogg", "asf", "mxf", "nut", "ivf",
    "obu", "h264", "hevc", "vvc", "m4v", "vc1", "rm", "dv", "gif", "yuv4mpegpipe", "mjpeg", "wtv", "avs2", "cavsvideo",
})  # fmt: skip
# Live protocols FFmpeg opens itself, and the lower protocols each needs (FFmpeg's `protocol_whitelist` names).
LIVE_PROTOCOLS = {
    "udp": ("udp",),
    "tcp": ("tcp",),
    "rtmp": ("rtmp", "tcp"),
    "rtmps": ("rtmps", "rtmp", "tls", "tcp"),
    "srt": ("srt",),
}
# Raster formats PIL decodes itself that images are read in (PIL's names); others are refused unopened: EPS, for
# one, is rendered by running Ghostscript on the file.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_DOWNLOAD_CHUNK = 1 << 16
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")


@dataclass(frozen=True)
class VideoIntakePolicy:
    """What may be opened as a video, and how much of it read. The defaults suit a server taking URLs from clients:
    local files and public http(s) allowed, nothing that opens further resources, budgets that a 4K hour-long video
    sampled at 1 fps fits and a decompression bomb does not.

    Args:
        allow_local_files: paths and `file://` URLs (regular files only: FIFOs, devices, sockets and directories are
            refused before they are opened).
        allow_http: http(s) URLs, fetched by the bounded client of this module.
        allow_data_urls: `data:` URLs (base64 or percent-encoded), within `max_bytes`.
        live_protocols: live protocols FFmpeg may open itself (names of `LIVE_PROTOCOLS`: udp, tcp, rtmp, rtmps,
            srt); none by default. A live URL that connects somewhere has its host checked like an http(s) one.
        allowed_demuxers: FFmpeg demuxers accepted (`VIDEO_DEMUXERS`). Adding `hls` or `concat` lets a playlist open
            the files it names with the protocols the source itself uses: only for inputs you trust.
        trusted_hosts: host names, addresses or networks (`"10.0.0.0/8"`) a network source may reach although they
            are not public (private, loopback, link-local, cloud-metadata addresses are refused otherwise).
        max_redirects: http(s) redirects followed; each new location is checked again.
        read_timeout_s: longest wait for a connection or for one read from a network source, in seconds.
        deadline_s: wall-clock limit for reading one video (fetching and decoding), checked after every network read
            and every demuxed packet; None for no limit (live streams).
        max_bytes: largest network or `data:` source, in bytes.
        max_frame_pixels: largest frame (width x height, from the stream header, and enforced by the decoder).
        max_decoded_frames: most frames returned for one video (the distinct sampled frames of `read_video` and of a
            video given as a list of image paths or URLs, the frames `iter_video_frames` yields); None for no limit
            (live streams).
        max_indexed_frames: most frames a video may contain: reading one keeps the timestamp of each of its frames in
            memory (about 100 bytes a frame), so a small file of millions of tiny frames is refused instead.
    """

    allow_local_files: bool = True
    allow_http: bool = True
    allow_data_urls: bool = True
    live_protocols: frozenset[str] = frozenset()
    allowed_demuxers: frozenset[str] = VIDEO_DEMUXERS
    trusted_hosts: tuple[str, ...] = ()
    max_redirects: int = 5
    read_timeout_s: float = 30.0
    deadline_s: float | None = 1800.0
    max_bytes: int = 8 * 2**30
    max_frame_pixels: int = 4096 * 4096
    max_decoded_frames: int | None = 4096
    max_indexed_frames: int = 2_000_000

    def __post_init__(self):
        for name in ("live_protocols", "allowed_demuxers", "trusted_hosts"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"`{name}` is a collection of names, got the string {getattr(self, name)!r}.")
        object.__setattr__(self, "live_protocols", frozenset(self.live_protocols))
        object.__setattr__(self, "allowed_demuxers", frozenset(self.allowed_demuxers))
        object.__setattr__(self, "trusted_hosts", tuple(self.trusted_hosts))
        unknown = self.live_protocols - set(LIVE_PROTOCOLS)
        if unknown:
            raise ValueError(f"Unknown live protocols {sorted(unknown)}; choose among {sorted(LIVE_PROTOCOLS)}.")
        for host in self.trusted_hosts:
            if not isinstance(host, str) or not host:
                raise ValueError(f"`trusted_hosts` holds host names or networks as strings, got {host!r}.")
        counts = (
            ("max_redirects", 0),
            ("max_bytes", 1),
            ("max_frame_pixels", 1),
            ("max_decoded_frames", 1),
            ("max_indexed_frames", 1),
        )
        for name, smallest in counts:
            value = getattr(self, name)
            if value is None and name == "max_decoded_frames":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise ValueError(f"`{name}` must be a whole number >= {smallest}, got {value!r}.")
        for name in ("read_timeout_s", "deadline_s"):
            value = getattr(self, name)
            if (value is not None or name == "read_timeout_s") and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}.")

    def replace(self, **changes) -> "VideoIntakePolicy":
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def check_frame_count(self, count: int, name: str) -> None:
        """Raise `FrameCountBudgetError` when `count` frames of the video `name` are over `max_decoded_frames`."""
        if self.max_decoded_frames is not None and count > self.max_decoded_frames:
            raise FrameCountBudgetError(
                f"Reading {name} would return {count} frames, over the intake budget of {self.max_decoded_frames} "
                "frames per video; sample fewer (`num_frames`, a lower `fps`, `max_frames`) or raise "
                "`VideoIntakePolicy(max_decoded_frames=...)`."
            )

    def check_indexed_frames(self, count: int, name: str) -> None:
        """Raise `FrameCountBudgetError` once the video `name` has shown more than `max_indexed_frames` frames."""
        if count > self.max_indexed_frames:
            raise FrameCountBudgetError(
                f"{name} has more than {self.max_indexed_frames} frames, the intake budget for the frames of one video "
                "(each is indexed in memory); raise `VideoIntakePolicy(max_indexed_frames=...)` for a longer video."
            )

    def ffmpeg_options(self, protocols: tuple[str, ...]) -> dict[str, str]:
        """`av.open` options binding the open and every nested open to `protocols` and the allowed demuxers, and the
        stream probing's decoders to the pixel budget."""
        return {
            "protocol_whitelist": ",".join(protocols),
            "format_whitelist": ",".join(sorted(self.allowed_demuxers)),
            "max_pixels": str(self.max_frame_pixels),
        }

    def is_trusted(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether `address` (which `host` resolved to) may be reached: public, or trusted by name or network."""
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return True
        for trusted in self.trusted_hosts:
            if trusted.lower() == host.lower():
                return True
            try:
                if address in ipaddress.ip_network(trusted, strict=False):
                    return True
            except ValueError:  # a host name
                continue
        return False


DEFAULT_POLICY = VideoIntakePolicy()
INTAKE_POLICY_VARIABLE = "STORM_VIDEO_INTAKE_POLICY"


def environment_policy() -> VideoIntakePolicy:
    """The intake policy of a process whose video processor its operator does not construct (`transformers serve`):
    `DEFAULT_POLICY` with the fields the JSON object in `$STORM_VIDEO_INTAKE_POLICY` sets, e.g.
    `STORM_VIDEO_INTAKE_POLICY='{"allow_local_files": false, "trusted_hosts": ["10.0.0.0/8"]}'`; `DEFAULT_POLICY` when
    the variable is unset or empty. A policy set on the video processor or passed per call takes precedence."""
    text = os.environ.get(INTAKE_POLICY_VARIABLE, "").strip()
    if not text:
        return DEFAULT_POLICY
    fields = ", ".join(field.name for field in dataclasses.fields(VideoIntakePolicy))
    try:
        changes = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"${INTAKE_POLICY_VARIABLE} is not JSON ({error}); set it to a JSON object of {fields}."
        ) from None
    unknown = sorted(set(changes) - set(fields.split(", "))) if isinstance(changes, dict) else [type(changes).__name__]
    if unknown:
        raise ValueError(f"${INTAKE_POLICY_VARIABLE} must be a JSON object of {fields}; got {', '.join(unknown)}.")
    return DEFAULT_POLICY.replace(**changes)


class Deadline:
    """The wall-clock limit of reading one video; `check()` raises `DeadlineExceededError` once it has passed."""

    def __init__(self, seconds: float | None, name: str):
        self.seconds, self.name = seconds, name
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise DeadlineExceededError(
                f"Reading {self.name} took longer than the intake deadline of {self.seconds:g}s; raise "
                "`VideoIntakePolicy(deadline_s=...)` for slow sources or long videos."
            )

    def timeout(self, read_timeout: float) -> float:
        """The timeout of the next blocking network operation: the read timeout, or less when the deadline is near."""
        self.check()
        remaining = self.remaining()
        return read_timeout if remaining is None else max(0.001, min(read_timeout, remaining))


@dataclass
class ResolvedSource:
    """What FFmpeg opens for a source: `target` (an FFmpeg URL or a file object) and the protocols it may use;
    `spool` is the temporary file holding a fetched video (closed, and so deleted, by `close`)."""

    target: object
    protocols: tuple[str, ...]
    is_live: bool = False
    spool: object = None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def url_scheme(source: str) -> str | None:
    """The lower-case scheme of a URL-like string (`http`, `concat`, ...), or None for a plain path."""
    match = _SCHEME.match(source)
    return match[1].lower() if match else None


def resolve_source(source, name: str, policy: VideoIntakePolicy, deadline: Deadline) -> ResolvedSource:
    """Check `source` (a path, URL, bytes or binary file object) against `policy` and make it openable: local files
    are checked with `os.stat` before anything opens them, http(s) videos fetched into a temporary file, `data:` URLs
    decoded. Raises a `VideoSourceRefusedError` (or a budget error) naming the rule."""
    from io import BytesIO

    if isinstance(source, (bytes, bytearray, memoryview)):
        return ResolvedSource(BytesIO(source), ())
    if hasattr(source, "read"):
        return ResolvedSource(source, ())
    text = os.fspath(source)
    scheme = url_scheme(text) if isinstance(source, str) else None
    if scheme is None:  # a path (a Windows drive letter is one character, never a scheme here)
        return ResolvedSource(_local_file(text, name, policy), ("file",))
    if scheme == "file":
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise VideoSourceRefusedError(f"{name} names a file on another host ({parts.netloc!r}); pass a local path.")
        return ResolvedSource(_local_file(urllib.request.url2pathname(parts.path), name, policy), ("file",))
    if scheme == "data":
        return ResolvedSource(BytesIO(_data_url_bytes(text, name, policy)), ())
    if scheme in ("http", "https"):
        if not policy.allow_http:
            raise VideoSourceRefusedError(
                f"{name} is an http(s) URL, which this intake policy does not allow (`allow_http=False`); pass the "
                "video's bytes or a local file instead, or allow http(s)."
            )
        spool = fetch_http(text, name, policy, deadline)
        return ResolvedSource("file:" + spool.name, ("file",), spool=spool)
    if scheme in LIVE_PROTOCOLS and scheme in policy.live_protocols:
        return ResolvedSource(_checked_live_url(text, scheme, name, policy), LIVE_PROTOCOLS[scheme], is_live=True)
    if os.path.isfile(text) and policy.allow_local_files:  # a local file whose name merely looks like a URL
        return ResolvedSource(_local_file(text, name, policy), ("file",))
    if scheme in LIVE_PROTOCOLS:
        raise VideoSourceRefusedError(
            f"{name} is a live {scheme} URL; live protocols are opened only when enabled "
            f"(`VideoIntakePolicy(live_protocols={{'{scheme}'}})`, or `storm-hf stream`)."
        )
    raise VideoSourceRefusedError(
        f"{name} uses the protocol '{scheme}:', which is not a video source this intake policy allows (FFmpeg "
        "protocols such as concat:, subfile:, cache:, async:, pipe: or ftp: can read other files or hosts). Pass a "
        "local path, an http(s) URL, a data: URL, bytes or a file object."
    )


def _local_file(path: str, name: str, policy: VideoIntakePolicy) -> str:
    """`file:` URL of `path` after checking, before any open, that it is an existing regular file."""
    if not policy.allow_local_files:
        raise VideoSourceRefusedError(
            f"{name} is a local file, which this intake policy does not allow (`allow_local_files=False`); pass the "
            "video's bytes or an http(s) URL."
        )
    try:
        status = os.stat(path)  # follows symlinks: the file itself is checked, opening nothing
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Video file {name} does not exist; pass an existing path, an http(s) URL, bytes or a binary file object."
        ) from None
    mode = status.st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{name} is a directory, not a video file; pass the path of a video file.")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(
            mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"  # fmt: skip
        raise NotARegularFileError(
            f"{name} is {kind}, not a regular file; reading it could block or never end. Pass a video file, or read a "
            "live stream with `storm_hf.streaming.iter_video_frames` (a file object of the pipe)."
        )
    if status.st_size == 0:
        raise FormatRefusedError(
            f"{name} is empty (0 bytes), not a video. (Kernel pseudo-files, e.g. under /proc, report 0 bytes and may "
            "block or never end when read.) Pass a video file."
        )
    return "file:" + os.path.abspath(path)  # "file:" so that the name is never read as an FFmpeg protocol


def _data_url_bytes(url: str, name: str, policy: VideoIntakePolicy) -> bytes:
    if not policy.allow_data_urls:
        raise VideoSourceRefusedError(
            f"{name} is a data: URL, which this intake policy does not allow (`allow_data_urls=False`); pass the "
            "video's bytes instead, or allow data: URLs."
        )
    header, comma, payload = url.partition(",")
    if not comma:
        raise VideoDecodingError(
            f"{name} is not a valid data: URL (no ',' before the data); write it as `data:video/mp4;base64,<data>`."
        )
    is_base64 = header.lower().endswith(";base64")
    size = len(payload) * 3 // 4 if is_base64 else len(payload)
    if size > policy.max_bytes:
        raise ByteBudgetError(
            f"{name} holds about {size} bytes, over the intake byte budget of {policy.max_bytes}; raise "
            "`VideoIntakePolicy(max_bytes=...)` to read it."
        )
    if not is_base64:
        return urllib.parse.unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise VideoDecodingError(f"{name} is not valid base64 ({error}); encode the video's bytes as base64.") from None


def checked_address(host: str, port: int, name: str, policy: VideoIntakePolicy) -> str:
    """The address to connect to for `host`: every address its DNS answer holds must be public or trusted."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise VideoDecodingError(
                f"{name}: the host {host!r} could not be resolved ({error}); check the URL's host name."
            ) from None
        addresses = [ipaddress.ip_address(answer[4][0].split("%")[0]) for answer in answers]
    for address in addresses:
        if not policy.is_trusted(host, address):
            raise PrivateAddressError(
                f"{name} leads to {host} ({address}), a private, loopback, link-local or otherwise non-public "
                "address, which the intake policy refuses (it could reach internal services). If this host is "
                f"meant to be reached, add it to `VideoIntakePolicy(trusted_hosts=('{host}',))` (or its network)."
            )
    return str(addresses[0])


def _checked_live_url(url: str, scheme: str, name: str, policy: VideoIntakePolicy) -> str:
    """A live URL, its host checked unless it only receives (udp input, a listening tcp or srt socket)."""
    parts = urllib.parse.urlsplit(url)
    if scheme == "udp" or _listens(scheme, url) or not parts.hostname:
        return url
    checked_address(parts.hostname, parts.port or 0, name, policy)
    return url


def _listens(scheme: str, url: str) -> bool:
    """Whether FFmpeg opens the live `url` as a listening socket, read from its query as FFmpeg's tcp and srt protocols
    read it (`av_find_info_tag`: from the first '?', the first option of a name, nothing percent-decoded). tcp listens
    for a bare `listen`, `listen=1` or `listen=2` and connects for `listen=0` (FFmpeg refuses values it cannot read);
    srt listens for `mode=listener` (not rendezvous, which sends to the host); rtmp takes `listen` only as an FFmpeg
    option, never from the URL, so an rtmp URL always connects."""
    options = {}
    for option in url.partition("?")[2].split("&"):
        key, _, value = option.partition("=")
        options.setdefault(key, value)
    if scheme == "tcp" and "listen" in options:
        number = re.match(r"\s*[+-]?\d+", options["listen"])
        return number is None or int(number[0]) in (1, 2)
    return scheme == "srt" and options.get("mode") == "listener"


def fetch_http(url: str, name: str, policy: VideoIntakePolicy, deadline: Deadline):
    """Download an http(s) URL into a temporary file (returned open; closing deletes it).

    Every hop resolves its host, checks every address (`checked_address`) and connects to the checked one (no second
    DNS lookup to rebind); redirects are followed by hand up to `max_redirects`; the whole download must end within
    the deadline (checked after every read, so a trickling server trips it) and `max_bytes`.
    """
    spool = tempfile.NamedTemporaryFile(prefix="storm-video-", suffix=".download")  # noqa: SIM115 - returned open
    try:
        for _ in range(policy.max_redirects + 1):
            location = _download(url, name, policy, deadline, spool)
            if location is None:
                spool.flush()
                return spool
            url = urllib.parse.urljoin(url, location)
            if url_scheme(url) not in ("http", "https"):
                raise VideoSourceRefusedError(
                    f"{name} redirects to {url!r}, which is not an http(s) URL; only http(s) redirects are followed."
                )
        raise TooManyRedirectsError(
            f"{name} redirected more than {policy.max_redirects} times; raise "
            "`VideoIntakePolicy(max_redirects=...)` or pass the final URL."
        )
    except BaseException:
        spool.close()
        raise


def _download(url: str, name: str, policy: VideoIntakePolicy, deadline: Deadline, spool) -> str | None:
    """One request: writes a 200 body into `spool` and returns None, or returns a redirect's location."""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme.lower() == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    address = checked_address(host, port, name, policy)
    try:
        with _DeadlineWatchdog(deadline) as watchdog:
            sock = socket.create_connection((address, port), timeout=deadline.timeout(policy.read_timeout_s))
            watchdog.watch(sock)
            if https:  # the handshake as a whole is bounded by the socket's timeout
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
                watchdog.watch(sock)
            connection = http.client.HTTPConnection(host, port)  # the connected socket is used as is
            connection.sock = sock
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            connection.request("GET", target, headers={"Accept-Encoding": "identity", "User-Agent": "storm-hf"})
            response = connection.getresponse()
            try:
                if response.status in _REDIRECT_STATUSES:
                    location = response.getheader("Location")
                    if not location:
                        raise VideoDecodingError(
                            f"{name} answered HTTP {response.status} without a Location; pass the video's final URL."
                        )
                    return location
                if response.status != 200:
                    raise VideoDecodingError(
                        f"{name} answered HTTP {response.status} {response.reason}; check the URL."
                    )
                length = response.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > policy.max_bytes:
                    raise _over_budget(name, policy)
                spool.seek(0)
                spool.truncate()
                received = 0
                while True:
                    sock.settimeout(deadline.timeout(policy.read_timeout_s))
                    chunk = response.read1(_DOWNLOAD_CHUNK)
                    if not chunk:
                        return None
                    received += len(chunk)
                    if received > policy.max_bytes:
                        raise _over_budget(name, policy)
                    spool.write(chunk)
            finally:
                connection.close()
    except (TimeoutError, socket.timeout):
        deadline.check()
        raise VideoDecodingError(
            f"{name} did not answer within {policy.read_timeout_s:g}s; check the URL, or raise "
            "`VideoIntakePolicy(read_timeout_s=...)`."
        ) from None
    except (OSError, http.client.HTTPException) as error:
        raise VideoDecodingError(f"{name} could not be fetched ({error}); check the URL.") from None


class _DeadlineWatchdog:
    """Shuts the watched socket down once the deadline has passed, which ends any read blocked on it: the per-read
    timeout does not bound a server that trickles its status line or headers a byte at a time (`http.client` reads
    them without looking at the deadline). Leaving the block closes the socket, and raises `DeadlineExceededError`
    when the watchdog fired, whatever the cut-off reads made of the response."""

    def __init__(self, deadline: Deadline):
        self.deadline, self.sock, self.fired = deadline, None, False
        remaining = deadline.remaining()
        # A little past the end, so that `deadline.check()` raises once the watchdog has fired.
        self.timer = None if remaining is None else threading.Timer(max(remaining, 0.0) + 0.01, self._shut_down)

    def __enter__(self):
        if self.timer is not None:
            self.timer.daemon = True
            self.timer.start()
        return self

    def watch(self, sock) -> None:
        """Watch `sock` from now on (a TLS socket replaces the plain one it wraps); raises when the deadline has
        passed, in case the watchdog fired before."""
        self.sock = sock
        self.deadline.check()

    def _shut_down(self) -> None:
        self.fired = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def __exit__(self, *exc_info):
        if self.timer is not None:
            self.timer.cancel()
        if self.sock is not None:
            self.sock.close()
        if self.fired:
            self.deadline.check()


def _over_budget(name: str, policy: VideoIntakePolicy) -> ByteBudgetError:
    return ByteBudgetError(
        f"{name} is larger than the intake byte budget of {policy.max_bytes} bytes; raise "
        "`VideoIntakePolicy(max_bytes=...)` to read it."
    )


def read_image_frame(source, policy: VideoIntakePolicy):
    """(height, width, 3) uint8 RGB array of one image file (a frame of a video given as a list of image paths or
    URLs), read under `policy`: the same source rules and budgets as a video."""
    import numpy as np
    import PIL.Image

    name = f"'{os.fspath(source)}'"
    resolved = resolve_source(source, name, policy, Deadline(policy.deadline_s, name))
    try:
        if resolved.is_live:
            raise VideoSourceRefusedError(f"{name} is a live stream, not an image file; pass an image file or URL.")
        target = resolved.target
        path_or_file = target[len("file:") :] if isinstance(target, str) else target
        with PIL.Image.open(path_or_file, formats=IMAGE_FORMATS) as image:
            if image.width * image.height > policy.max_frame_pixels:
                raise FramePixelBudgetError(
                    f"{name} is a {image.width}x{image.height} image, over the intake pixel budget of "
                    f"{policy.max_frame_pixels} pixels per frame; raise `VideoIntakePolicy(max_frame_pixels=...)`."
                )
            return np.array(image.convert("RGB"))  # writable: torch.from_numpy warns about read-only arrays
    except PIL.Image.DecompressionBombError as error:  # over PIL's own limit, refused as PIL opens it
        raise FramePixelBudgetError(
            f"{name} is an image over PIL's decompression-bomb limit ({error}), and over the intake pixel budget of "
            f"{policy.max_frame_pixels} pixels per frame unless `VideoIntakePolicy(max_frame_pixels=...)` was raised; "
            "to decode it, raise that budget and `PIL.Image.MAX_IMAGE_PIXELS`."
        ) from None
    except PIL.UnidentifiedImageError:
        raise FormatRefusedError(
            f"{name} is not an image in a format the intake reads ({', '.join(IMAGE_FORMATS)}); convert it to PNG or "
            'JPEG, or if it is a video, pass it as a video (`videos=` or a `{"type": "video"}` chat entry).'
        ) from None
    finally:
        resolved.close()


def read_image_sources(images, policy: VideoIntakePolicy):
    """`images` (an image or nested lists of them) with every path or URL read under `policy` into a (height, width,
    3) uint8 array; strings that are neither (base64 data, which transformers decodes without I/O) and decoded images
    are left as they are."""
    if isinstance(images, (list, tuple)):
        return [read_image_sources(image, policy) for image in images]
    if isinstance(images, os.PathLike) or (
        isinstance(images, str) and (url_scheme(images) is not None or os.path.exists(images))
    ):
        return read_image_frame(images, policy)
    return images
