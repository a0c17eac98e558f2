"""Video processor of STORM: decode (PyAV) -> sample frames -> resize to 448x448 -> rescale and normalise (SigLIP),
and the LLM token grid each video becomes."""

import itertools
import os
from functools import partial

import numpy as np
import PIL.Image
import torch
from huggingface_hub.dataclasses import validate_typed_dict
from transformers.image_processing_utils import BatchFeature, get_size_dict
from transformers.image_utils import PILImageResampling, SizeDict, is_valid_image
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, make_batched_metadata

from .token_budget import (
    DEFAULT_TOKEN_GRID,
    TOKEN_GRID_SETTINGS,
    FramePlan,
    TokenGridSettings,
    frames_within_budget,
    visual_token_grid,
)
from .video_decoding import StormVideoMetadata, check_sampling_arguments, is_video_source, read_video
from .video_intake import ImageNotVideoError, VideoIntakePolicy, environment_policy, read_image_frame


# Arguments `StormVideoProcessor.preprocess` uses itself (frame selection, token count, outputs); the others set how
# transformers' `BaseVideoProcessor.preprocess` converts the pixels.
SETTINGS_OF_THIS_PROCESSOR = (
    "num_frames",
    "fps",
    "min_frames",
    "max_frames",
    "do_sample_frames",
    "max_visual_tokens",
    "temporal_sampling_stride",
    *TOKEN_GRID_SETTINGS,
    "video_metadata",
    "return_metadata",
    "intake_policy",
)


class StormVideoProcessorKwargs(VideosKwargs, TokenGridSettings, total=False):
    r"""
    min_frames (`int`, *optional*):
        Fewest frames `fps` sampling may return (the count it derives is raised to this), and the smallest `num_frames`
        accepted.
    max_frames (`int`, *optional*):
        Most frames `fps` sampling, the token budget or sampling without `num_frames`/`fps` may pick (the count is
        capped to this), and the largest `num_frames` accepted.
    max_visual_tokens (`int`, *optional*):
        LLM token budget of each sample's videos. Replaces `num_frames`/`fps`: the processor picks the frame count and
        the temporal-sampling stride from each video's length (see `StormVideoProcessor.plan_frames`).
    temporal_sampling_stride (`int`, *optional*, defaults to 1):
        Keep every n-th pooled frame (test time only). With `max_visual_tokens`, a stride passed in the call fixes the
        stride; otherwise the budget policy chooses it (the default stride is not used).
    patch_size, downsample_ratio, temporal_pool_size, spatial_pool_size:
        The model's token-grid settings (`token_budget.TokenGridSettings`), from which each video's token grid is
        counted. They must match the model's config (`build_processor` copies them from it).
    intake_policy ([`VideoIntakePolicy`], *optional*):
        Which video sources may be opened and the budgets of one video (default: `VideoIntakePolicy()`; see
        docs/untrusted-video.md). Settable per call or per processor, never saved with it.
    """

    min_frames: int | None
    max_frames: int | None
    max_visual_tokens: int | None
    temporal_sampling_stride: int | None
    intake_policy: VideoIntakePolicy | None


def _image_extensions() -> set[str]:
    """Extensions of the image formats PIL reads, less those of videos: MPEG (PIL identifies `.mpg` files) and GIF
    (an animated GIF is a video; the decoder names a one-frame GIF as an image)."""
    return {
        extension for extension, format in PIL.Image.registered_extensions().items() if format not in ("MPEG", "GIF")
    }


def _is_frame_paths(video) -> bool:
    """A list of image file paths or URLs (by extension): the frames of one video."""
    extensions = _image_extensions()
    return bool(video) and all(
        isinstance(frame, (str, os.PathLike)) and os.path.splitext(os.fspath(frame))[1].lower() in extensions
        for frame in video
    )


def _nesting_depth(value) -> int | None:
    """How many list levels hold numbers (4 for a `datasets` video: frames x height x width x channels); None when the
    innermost item is not a number."""
    depth = 0
    while isinstance(value, (list, tuple)) and value:
        value, depth = value[0], depth + 1
    return depth if isinstance(value, (int, float, np.number)) else None


def _as_video(item):
    """`item` as one video (path, bytes, file object, array, list of frames or of frame paths), or None if it is none.

    Nested lists of numbers (frames stored by `datasets`) become a uint8 (or float) array.
    """
    if isinstance(item, (list, tuple)):
        if _is_frame_paths(item):
            return list(item)
        if item and all(is_valid_image(frame) and np.ndim(frame) != 4 for frame in item):
            return list(item)
        if _nesting_depth(item) == 4:
            return _array_from_nested_lists(item)
        return None
    if is_video_source(item):
        return item
    if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
        return item
    return None


def _array_from_nested_lists(video) -> np.ndarray:
    try:
        array = np.asarray(video)
    except ValueError as error:
        raise ValueError(
            "A video given as nested lists must have frames of equal size (frames x height x width x channels): "
            f"{error}"
        ) from None
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"A video given as nested lists of integers must hold 0..255 pixel values, got {array.min()}.."
                f"{array.max()}."
            )
        array = array.astype(np.uint8)
    return array


def make_list_of_videos(videos) -> list:
    """Flatten a video, a list of videos or per-sample lists of videos into a flat list of videos.

    A video is a path, bytes or a binary file object (decoded later), a (num_frames, height, width, channels) or
    (num_frames, channels, height, width) array or tensor, a list of frames (PIL images or 3D arrays), a list of image
    file paths or URLs (one frame each), or nested lists of pixel values (how `datasets` stores frames). A 5D array is
    a batch of videos. A single image is rejected: it is not a video.
    """
    video = _as_video(videos)
    if video is not None:
        return [video]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            f"Got an array of shape {tuple(videos.shape)} where a video was expected. "
            "A video is a (num_frames, height, width, channels) array, a list of frames or a file; "
            "pass single images with `images=` instead."
        )
    if isinstance(videos, (list, tuple)):
        return [video for item in videos for video in make_list_of_videos(item)]
    if is_valid_image(videos):
        raise ValueError(
            f"Got an image ({type(videos).__name__}) where a video was expected; pass images with `images=`, or wrap "
            "the frames of a video in a list."
        )
    raise TypeError(
        f"Unsupported video input of type {type(videos).__name__}: pass a path, bytes, a binary file object, a "
        "(num_frames, height, width, channels) array or tensor, a list of frames or of frame paths, or nested lists "
        "of pixel values."
    )


def group_videos_by_sample(videos) -> tuple[list[list], bool]:
    """The videos of each sample, and whether the input was nested per sample.

    A list whose items are all videos (or a single video, or a 5D array) is a batch of one-video samples; a list of
    lists of videos holds one list per sample (possibly empty).
    """
    nested = isinstance(videos, (list, tuple)) and videos and all(isinstance(item, (list, tuple)) for item in videos)
    if nested and all(_as_video(item) is None for item in videos):
        return [make_list_of_videos(sample) if sample else [] for sample in videos], True
    return [[video] for video in make_list_of_videos(videos)], False


class StormVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of STORM (the paper's SigLIP pre-processing): frames sampled uniformly
    (`round(linspace(0, num_frames_in_video - 1, num_frames))`), at `fps` frames per second, or as many as fit
    `max_visual_tokens`; converted to RGB, resized to 448x448 (bicubic), rescaled by 1/255 and normalised with
    mean = std = 0.5.

    Files (paths, bytes, binary file objects) are decoded with PyAV, reading only what the sampled frames need; the
    returned metadata (`return_metadata=True`) holds the container's timestamps of the sampled frames. Decoded frames
    (arrays, tensors, lists of PIL images or of image paths, nested lists of pixel values) are sampled by index;
    sampling them by `fps` or by a token budget uses `video_metadata` with their frame rate.

    `videos` is a batch of videos (one sample each) or a list of per-sample lists of videos. Returns a `BatchFeature`:
        - `pixel_values_videos`: float (num_samples, max_frames, 3, 448, 448), each sample's frames back to back,
          zero-padded at the end.
        - `video_num_frames`: long, frames per video: (num_videos,) for a flat batch, (num_samples, max_videos) with
          0 for empty slots for a per-sample batch.
        - `temporal_sampling_stride`: long (num_samples,), the stride each sample's tokens were counted with.
        - `video_token_grid`: long (num_videos, 3), (frames, rows, columns) of each video's LLM tokens after pooling
          and sampling; their product is the number of placeholders the processor writes.
    With `return_tensors=None`, `pixel_values_videos` is a list of (num_frames, 3, 448, 448) tensors (no padding) and
    the other keys are lists, per video (`temporal_sampling_stride` per sample).
    """

    resample = PILImageResampling.BICUBIC
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 448, "width": 448}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    num_frames = 128
    fps = None
    min_frames = None
    max_frames = None
    max_visual_tokens = None
    temporal_sampling_stride = 1
    intake_policy = None
    return_tensors = "pt"
    valid_kwargs = StormVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_num_frames", "temporal_sampling_stride", "video_token_grid"]

    def __init__(self, **kwargs: Unpack[StormVideoProcessorKwargs]):
        policy = kwargs.get("intake_policy")
        if policy is not None and not isinstance(policy, VideoIntakePolicy):
            raise TypeError(
                f"`intake_policy` must be a `VideoIntakePolicy`, got {type(policy).__name__}; it is set in code, never "
                "loaded from a saved configuration."
            )
        # Token-grid settings not given are the paper model's.
        defaults = {name: value for name, value in DEFAULT_TOKEN_GRID.items() if kwargs.get(name) is None}
        super().__init__(**(kwargs | defaults))

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        """transformers' hook for reading videos from paths or URLs, here STORM's decoder under this processor's intake
        policy. Returns `(frames, metadata)` for one video, `[all frames, all metadata]` for a list."""
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(video, sample_indices_fn) for video in video_url_or_urls]))
        return read_video(video_url_or_urls, sample_indices_fn, policy=self.intake_policy or environment_policy())

    def to_dict(self) -> dict:
        """The settings to save, without `intake_policy`: a checkpoint must not loosen the intake policy of whoever
        loads it (set it in code: `video_processor.intake_policy = ...`, or per call)."""
        output = super().to_dict()
        output.pop("intake_policy", None)
        return output

    def token_grid(self, num_frames: int, height: int, width: int, temporal_sampling_stride: int = 1, **settings):
        """(frames, rows, columns) of the LLM tokens of `num_frames` processed frames of `height`x`width` pixels;
        `settings` override this processor's `TOKEN_GRID_SETTINGS`."""
        settings = {name: settings.get(name) or getattr(self, name) for name in TOKEN_GRID_SETTINGS}
        return visual_token_grid(
            num_frames, height, width, temporal_sampling_stride=temporal_sampling_stride, **settings
        )

    def plan_frames(
        self,
        metadata: VideoMetadata,
        max_visual_tokens: int,
        temporal_sampling_stride: int | None = None,
        max_frames: int | None = None,
        size: dict | None = None,
        **settings,
    ) -> FramePlan:
        """How many frames of the video `metadata` describes to sample, and the stride, so that its LLM tokens fit
        `max_visual_tokens` (the policy of `token_budget.frames_within_budget`: all frames if they fit; else stride 1
        while that still samples >= 1 frame per second, stride 2 with twice the frames below that).

        `size` (the processed frame size, defaults to `self.size`) and `settings` (`TOKEN_GRID_SETTINGS`) override this
        processor's.
        """
        size = size or self.size
        _, rows, columns = self.token_grid(1, size["height"], size["width"], **settings)
        duration = metadata.duration or (metadata.total_num_frames / metadata.fps if metadata.fps else None)
        return frames_within_budget(
            max_visual_tokens,
            total_frames=metadata.total_num_frames,
            duration=duration,
            tokens_per_frame=rows * columns,
            temporal_pool_size=settings.get("temporal_pool_size") or self.temporal_pool_size,
            temporal_sampling_stride=temporal_sampling_stride,
            max_frames=max_frames,
        )

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        fps: float | None = None,
        min_frames: int | None = None,
        max_frames: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Indices of the frames to keep: `num_frames` uniformly spread, or `fps` frames per second of video; with
        neither, every frame, or `max_frames` of them uniformly spread when the video has more.

        With `fps`, the count is `round(duration * fps)` clamped to `[min_frames, max_frames]`; the frames are then
        spread uniformly as with `num_frames`. Asking for more frames than the video has raises.
        """
        check_sampling_arguments(num_frames, fps, min_frames, max_frames)
        total = metadata.total_num_frames
        if fps is not None:
            if not metadata.fps:
                raise ValueError(
                    f"Cannot sample {fps} frames per second: the frame rate of this video is unknown (decoded frames "
                    "carry none). Pass `video_metadata={'fps': ...}` with the real frame rate, or use `num_frames`."
                )
            num_frames = max(1, round(total / metadata.fps * fps))
            num_frames = max(num_frames, min_frames or 1)
            num_frames = min(num_frames, max_frames or num_frames)
            requested = f"{num_frames} frames ({fps} fps over {total / metadata.fps:.2f}s, min_frames={min_frames})"
        elif num_frames is not None:
            too_few = min_frames is not None and num_frames < min_frames
            if too_few or (max_frames is not None and num_frames > max_frames):
                raise ValueError(
                    f"`num_frames={num_frames}` is outside [min_frames={min_frames}, max_frames={max_frames}]."
                )
            requested = f"num_frames={num_frames}"
        else:  # every frame, at most `max_frames` of them
            num_frames = requested = min(total, max_frames or total)
        if num_frames > total:
            raise ValueError(
                f"Asked for {requested} but the video has only {total} frames; ask for at most {total} frames, or pass "
                "`do_sample_frames=False` to keep all of them."
            )
        return np.round(np.linspace(0, total - 1, num_frames)).astype(np.int64)

    def _frame_size(self, size=None) -> SizeDict:
        """The `height` x `width` frames are resized to (`size`, default `self.size`; an int is a square): the vision
        tower's input size, from which the token grid is counted. Raises for edge-length sizes."""
        size = self.size if size is None else size
        size = SizeDict(**get_size_dict(size, default_to_square=self.default_to_square))
        if size.height is None or size.width is None:
            raise ValueError(
                f"{type(self).__name__} resizes frames to `size={{'height': ..., 'width': ...}}` (the vision tower's "
                f"image size), got `size={dict(size)}`. Pass the height and width of the model's "
                "`vision_config.image_size`."
            )
        return size

    def frame_resizer(self, size=None, resample=None):
        """`resize_frames` for `read_video` / `iter_video_frames`: (num_frames, height, width, 3) uint8 RGB frames
        resized as this processor resizes frames (to `size`, default `self.size`, with `resample`, default
        `self.resample`), so that decoded frames take the output size's memory and the processor's resize of them is
        the identity."""
        size = self._frame_size(size)
        resample = self.resample if resample is None else resample

        def resize_frames(frames: np.ndarray) -> np.ndarray:
            images = torch.from_numpy(frames).permute(0, 3, 1, 2)
            return self.resize(images, size=size, resample=resample).permute(0, 2, 3, 1).numpy()

        return resize_frames

    def preprocess(self, videos, **kwargs: Unpack[StormVideoProcessorKwargs]) -> BatchFeature:
        """Decode, sample and normalise `videos` (a batch, or per-sample lists) and count their tokens; see the class
        docstring for the outputs. A sample's videos share `max_visual_tokens` and one stride."""
        validate_typed_dict(self.valid_kwargs, kwargs)
        unknown = set(kwargs) - {*self.valid_kwargs.__annotations__, "return_tensors"}
        if unknown:
            raise TypeError(f"Unexpected keyword argument(s) {sorted(unknown)} for {type(self).__name__}.")
        self._resolve_frame_selection(kwargs)
        call_stride = kwargs.get("temporal_sampling_stride")
        settings = {name: kwargs.pop(name, getattr(self, name, None)) for name in SETTINGS_OF_THIS_PROCESSOR}
        return_tensors = kwargs.pop("return_tensors", self.return_tensors)
        size = self._frame_size(kwargs.get("size")) if kwargs.get("do_resize", self.do_resize) else None

        samples, per_sample = group_videos_by_sample(videos)
        flat_videos = [video for sample in samples for video in sample]
        if not flat_videos:
            raise ValueError("No videos were passed.")
        metadata = self._metadata_per_video(flat_videos, settings["video_metadata"])
        budget, stride = settings["max_visual_tokens"], settings["temporal_sampling_stride"]
        grid_settings = {name: settings[name] for name in TOKEN_GRID_SETTINGS}
        selection = {name: settings[name] for name in ("num_frames", "fps", "min_frames", "max_frames")}
        if budget is not None and size is None:
            raise ValueError("`max_visual_tokens` needs `do_resize=True`: the token count depends on the frame size.")
        plans = [[] for _ in samples]  # filled per sample by the budget samplers while decoding
        if not settings["do_sample_frames"]:
            samplers = [[None] * len(sample) for sample in samples]
        elif budget is None:
            samplers = [[partial(self.sample_frames, **selection)] * len(sample) for sample in samples]
        else:
            budget_settings = dict(max_frames=selection["max_frames"], size=size, **grid_settings)
            samplers = [
                self._budget_samplers(len(sample), budget, call_stride, sample_plans, budget_settings)
                for sample, sample_plans in zip(samples, plans)
            ]
        resize_frames = None if size is None else self.frame_resizer(kwargs.get("size"), kwargs.get("resample"))
        policy = settings["intake_policy"] or environment_policy()
        decoded, sampled_metadata = [], []
        for video, video_metadata, sampler in zip(flat_videos, metadata, itertools.chain(*samplers)):
            frames, video_metadata = self._decode_and_sample(video, video_metadata, sampler, policy, resize_frames)
            decoded.append(frames)
            sampled_metadata.append(video_metadata)
        sample_strides = [
            sample_plans[0].temporal_sampling_stride if sample_plans else _stride(stride) for sample_plans in plans
        ]

        # The frames are decoded and sampled: transformers' `preprocess` converts, resizes, rescales and normalises them
        # with the remaining (pixel) arguments.
        frames = super().preprocess(decoded, do_sample_frames=False, return_tensors=None, **kwargs)
        frames = frames["pixel_values_videos"]
        video_strides = [stride for sample, stride in zip(samples, sample_strides) for _ in sample]
        grids = [
            self.token_grid(len(video), *video.shape[-2:], temporal_sampling_stride=video_stride, **grid_settings)
            for video, video_stride in zip(frames, video_strides)
        ]
        if budget is not None:
            self._check_budget(grids, [len(sample) for sample in samples], budget)

        if return_tensors is None:
            output = BatchFeature(
                {
                    "pixel_values_videos": frames,
                    "video_num_frames": [len(video) for video in frames],
                    "temporal_sampling_stride": sample_strides,
                    "video_token_grid": [list(grid) for grid in grids],
                }
            )
        else:
            layout = pad_videos(frames, [len(sample) for sample in samples] if per_sample else None)
            output = BatchFeature(
                {
                    **layout,
                    "temporal_sampling_stride": torch.tensor(sample_strides, dtype=torch.long),
                    "video_token_grid": torch.tensor(grids, dtype=torch.long),
                },
                tensor_type=return_tensors,
            )
        if settings["return_metadata"]:
            output["video_metadata"] = sampled_metadata
        return output

    @staticmethod
    def _resolve_frame_selection(kwargs: dict) -> None:
        """Make the frame selection of a call win over the defaults: `fps` replaces the default `num_frames` (and the
        reverse); either replaces a default `max_visual_tokens`, and `max_visual_tokens` replaces both defaults."""
        explicit = [name for name in ("num_frames", "fps") if kwargs.get(name) is not None]
        if kwargs.get("max_visual_tokens") is not None:
            if explicit:
                raise ValueError(
                    f"`max_visual_tokens` picks the number of frames itself; do not pass it with `{explicit[0]}`."
                )
            kwargs.update(num_frames=None, fps=None)
        elif explicit:
            kwargs.setdefault("max_visual_tokens", None)
            kwargs.setdefault("fps" if explicit[0] == "num_frames" else "num_frames", None)

    def _budget_samplers(
        self, num_videos: int, budget: int, stride: int | None, plans: list[FramePlan], settings: dict
    ) -> list[partial]:
        """Frame samplers of the `num_videos` videos of one sample, which share `budget` equally. The policy picks the
        stride of a lone video; several videos use `stride` (1 if None), since the model takes one stride per sample.
        Each sampler appends its plan to `plans`."""
        if not num_videos:
            return []
        sampler = partial(
            self._sample_within_budget,
            plans=plans,
            max_visual_tokens=budget // num_videos,
            temporal_sampling_stride=stride if num_videos == 1 else _stride(stride),
            **settings,
        )
        return [sampler] * num_videos

    def _sample_within_budget(self, metadata, plans: list[FramePlan], max_frames=None, **plan_kwargs) -> np.ndarray:
        """`sample_frames` with the frame count of `plan_frames`; the plan is appended to `plans`."""
        plan = self.plan_frames(metadata, max_frames=max_frames, **plan_kwargs)
        plans.append(plan)
        return self.sample_frames(metadata, num_frames=plan.num_frames)

    @staticmethod
    def _check_budget(grids: list[tuple[int, int, int]], videos_per_sample: list[int], budget: int) -> None:
        start = 0
        for sample, count in enumerate(videos_per_sample):
            tokens = sum(int(np.prod(grid)) for grid in grids[start : start + count])
            if tokens > budget:
                raise ValueError(
                    f"The videos of sample {sample} give {tokens} LLM tokens, over `max_visual_tokens={budget}`; with "
                    "`do_sample_frames=False` pass fewer frames, or let the processor sample them."
                )
            start += count

    @staticmethod
    def _metadata_per_video(videos: list, video_metadata) -> list[VideoMetadata | None]:
        """One metadata (or None) per video. `video_metadata` describes decoded frames only: files carry their own."""
        if video_metadata is None:
            return [None] * len(videos)
        if any(is_video_source(video) for video in videos):
            raise ValueError(
                "`video_metadata` describes decoded frames; video files carry their own. Pass it only with arrays, "
                "tensors or lists of frames."
            )
        if isinstance(video_metadata, (dict, VideoMetadata)):
            video_metadata = [video_metadata]
        if len(video_metadata) != len(videos):
            raise ValueError(
                f"Got {len(video_metadata)} `video_metadata` for {len(videos)} videos; pass one per video."
            )
        # A dict may leave out the frame count: the frames are at hand.
        video_metadata = [
            {"total_num_frames": len(video), **metadata} if isinstance(metadata, dict) else metadata
            for video, metadata in zip(videos, video_metadata)
        ]
        return make_batched_metadata(videos, video_metadata)

    @staticmethod
    def _decode_and_sample(
        video, metadata: VideoMetadata | None, sampler, policy: VideoIntakePolicy, resize_frames
    ) -> tuple:
        """Decode a file, or read a list of image files, under the intake `policy` (frames resized by `resize_frames` as
        they are decoded), or take decoded frames, keeping the frames `sampler(metadata=...)` picks (all when None).

        Returns the (num_frames, ...) frames and the metadata with `frames_indices` set.
        """
        if is_video_source(video):
            return read_video(video, sampler, policy=policy, resize_frames=resize_frames)
        if metadata is None:
            metadata = StormVideoMetadata(total_num_frames=len(video))
        metadata.total_num_frames = len(video)
        is_one_image = isinstance(video, list) and len(video) == 1  # e.g. an image in a `{"type": "video"}` chat entry
        try:
            if is_one_image and isinstance(video[0], (str, os.PathLike)):
                raise ValueError("an image file is not a video")
            indices = np.arange(len(video)) if sampler is None else np.asarray(sampler(metadata=metadata))
        except ValueError as error:
            if not is_one_image:
                raise
            name = repr(os.fspath(video[0])) if isinstance(video[0], (str, os.PathLike)) else type(video[0]).__name__
            raise ImageNotVideoError(
                f"An image ({name}) was given as a video ({error}). Pass it as an image (`images=` or a "
                '`{"type": "image"}` chat entry), or pass a video: a file, an array of frames, or a list of frames.'
            ) from None
        metadata.frames_indices = indices.tolist()
        if not isinstance(video, list):
            return video[torch.as_tensor(indices) if isinstance(video, torch.Tensor) else indices], metadata
        from_files = isinstance(video[0], (str, os.PathLike))
        if from_files:  # read like a video file: within the policy's frame budget, each frame resized as it is read
            policy.check_frame_count(len(set(metadata.frames_indices)), f"the video of {len(video)} image files")
        frames, shapes = [], set()
        for index in metadata.frames_indices:
            frame = _frame_to_array(video[index], policy)
            shapes.add(frame.shape)
            frames.append(resize_frames(frame[None])[0] if from_files and resize_frames is not None else frame)
        if len(shapes) > 1:
            raise ValueError(
                f"The frames of a video given as a list have different shapes {sorted(shapes)}; all frames of a video "
                "must have the same size."
            )
        return np.stack(frames), metadata


def _stride(stride: int | None) -> int:
    """A stride that was not set is 1."""
    return 1 if stride is None else stride


def _frame_to_array(frame, policy: VideoIntakePolicy) -> np.ndarray:
    """A frame of a list-of-frames video as an array; paths and URLs are loaded under the intake `policy`, PIL images
    converted to RGB."""
    if isinstance(frame, (str, os.PathLike)):
        return read_image_frame(frame, policy)
    return np.asarray(frame.convert("RGB")) if isinstance(frame, PIL.Image.Image) else np.asarray(frame)


def pad_videos(videos: list[torch.Tensor], num_videos_per_sample: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Stack videos (each (num_frames, 3, height, width)) into a zero-padded batch.

    Without `num_videos_per_sample`: one row per video, `pixel_values_videos` (num_videos, max_frames, 3, H, W) and
    `video_num_frames` (num_videos,). With it: one row per sample holding its videos' frames back to back,
    `pixel_values_videos` (batch, max_total_frames, 3, H, W) and `video_num_frames` (batch, max_videos_per_sample),
    0 where a sample has fewer videos.
    """
    if len({tuple(video.shape[1:]) for video in videos}) > 1:
        raise ValueError(
            f"Cannot batch videos of different frame sizes {sorted({tuple(v.shape[1:]) for v in videos})}; keep "
            "`do_resize=True` so that all frames have the same size."
        )
    counts = [1] * len(videos) if num_videos_per_sample is None else num_videos_per_sample
    starts = np.cumsum([0] + counts)
    samples = [videos[start:end] for start, end in itertools.pairwise(starts)]
    num_frames = torch.zeros(len(samples), max(counts), dtype=torch.long)
    for row, sample in enumerate(samples):
        num_frames[row, : len(sample)] = torch.tensor([len(video) for video in sample], dtype=torch.long)
    pixel_values = videos[0].new_empty((len(samples), int(num_frames.sum(-1).max()), *videos[0].shape[1:]))
    for row, sample in enumerate(samples):
        end = 0
        for video in sample:
            pixel_values[row, end : end + len(video)] = video
            end += len(video)
        pixel_values[row, end:] = 0
    if num_videos_per_sample is None:
        num_frames = num_frames[:, 0]
    return {"pixel_values_videos": pixel_values, "video_num_frames": num_frames}
