"""Video processor of STORM: decode (PyAV) -> sample frames -> resize to 448x448 -> rescale and normalise (SigLIP)."""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, is_valid_image
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, make_batched_metadata

from .video_decoding import StormVideoMetadata, is_video_source, read_video


class StormVideosKwargs(VideosKwargs, total=False):
    r"""
    min_frames (`int`, *optional*):
        Fewest frames `fps` sampling may return (the count it derives is raised to this), and the smallest `num_frames`
        accepted.
    max_frames (`int`, *optional*):
        Most frames `fps` sampling may return (the count it derives is capped to this), and the largest `num_frames`
        accepted.
    """

    min_frames: int | None
    max_frames: int | None


def make_list_of_videos(videos) -> list:
    """Flatten a video, a list of videos or per-sample lists of videos into a flat list of videos.

    A video is a path, bytes or a binary file object (decoded later), a (num_frames, height, width, channels) or
    (num_frames, channels, height, width) array or tensor, or a list of frames (PIL images or 3D arrays). A 5D array is
    a batch of videos. A single image is rejected: it is not a video.
    """
    if is_video_source(videos):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            f"Got an array of shape {tuple(videos.shape)} where a video was expected. A video is a (num_frames, height, "
            "width, channels) array, a list of frames or a file; pass single images with `images=` instead."
        )
    if isinstance(videos, (list, tuple)):
        if videos and all(is_valid_image(frame) and np.ndim(frame) != 4 for frame in videos):
            return [list(videos)]  # one video given as a list of frames
        return [video for item in videos for video in make_list_of_videos(item)]
    if is_valid_image(videos):
        raise ValueError(
            f"Got an image ({type(videos).__name__}) where a video was expected; pass images with `images=`, or wrap "
            "the frames of a video in a list."
        )
    raise TypeError(
        f"Unsupported video input of type {type(videos).__name__}: pass a path, bytes, a binary file object, a "
        "(num_frames, height, width, channels) array or tensor, or a list of frames."
    )


class StormVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of STORM (the paper's SigLIP pre-processing): frames sampled uniformly
    (`round(linspace(0, num_frames_in_video - 1, num_frames))`) or at `fps` frames per second, converted to RGB, resized
    to 448x448 (bicubic), rescaled by 1/255 and normalised with mean = std = 0.5.

    Files (paths, bytes, binary file objects) are decoded with PyAV, reading only what the sampled frames need; the
    returned metadata (`return_metadata=True`) holds the container's timestamps of the sampled frames. Decoded frames
    (arrays, tensors, lists of PIL images) are sampled by index; sampling them by `fps` needs `video_metadata` with
    their frame rate.

    Returns a `BatchFeature` with `pixel_values_videos`, float (num_videos, max_frames, 3, 448, 448) zero-padded after
    each video's frames, and `video_num_frames`, long (num_videos,). With `return_tensors=None`, `pixel_values_videos`
    is a list of (num_frames, 3, 448, 448) tensors (no padding) and `video_num_frames` a list.
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
    return_tensors = "pt"
    valid_kwargs = StormVideosKwargs
    model_input_names = ["pixel_values_videos", "video_num_frames"]

    def __init__(self, **kwargs: Unpack[StormVideosKwargs]):
        super().__init__(**kwargs)

    def preprocess(self, videos, **kwargs: Unpack[StormVideosKwargs]) -> BatchFeature:
        # `fps` passed in a call replaces the default `num_frames`, and `num_frames` replaces a default `fps`.
        if kwargs.get("fps") is not None:
            kwargs.setdefault("num_frames", None)
        if kwargs.get("num_frames") is not None:
            kwargs.setdefault("fps", None)
        return super().preprocess(videos, **kwargs)

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        fps: int | float | None = None,
        min_frames: int | None = None,
        max_frames: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Indices of the frames to keep: `num_frames` uniformly spread, or `fps` frames per second of video.

        With `fps`, the count is `round(duration * fps)` clamped to `[min_frames, max_frames]`; the frames are then
        spread uniformly as with `num_frames`. Asking for more frames than the video has raises.
        """
        if num_frames is not None and fps is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive; pass one of them.")
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
                raise ValueError(f"`num_frames={num_frames}` is outside [min_frames={min_frames}, max_frames={max_frames}].")
            requested = f"num_frames={num_frames}"
        else:
            return np.arange(total)
        if num_frames > total:
            raise ValueError(
                f"Asked for {requested} but the video has only {total} frames; ask for at most {total} frames, or pass "
                "`do_sample_frames=False` to keep all of them."
            )
        return np.round(np.linspace(0, total - 1, num_frames)).astype(np.int64)

    def _decode_and_sample_videos(self, videos, video_metadata, do_sample_frames=None, sample_indices_fn=None):
        """Decode files and sample frames. Returns a list of (num_frames, ...) frames and a list of metadata."""
        videos = make_list_of_videos(videos)
        sample_indices_fn = sample_indices_fn if do_sample_frames else None
        if video_metadata is not None:
            decoded = [video for video in videos if not is_video_source(video)]
            if len(decoded) != len(videos):
                raise ValueError(
                    "`video_metadata` describes decoded frames; video files carry their own. Pass it only with "
                    "arrays, tensors or lists of frames."
                )
            video_metadata = make_batched_metadata(videos, video_metadata)
        else:
            video_metadata = [None] * len(videos)

        sampled_videos, sampled_metadata = [], []
        for video, metadata in zip(videos, video_metadata):
            if is_video_source(video):
                frames, metadata = read_video(video, sample_indices_fn)
            else:
                frames = np.stack([_frame_to_array(frame) for frame in video]) if isinstance(video, list) else video
                if metadata is None:
                    metadata = StormVideoMetadata(total_num_frames=len(frames))
                metadata.total_num_frames = len(frames)
                indices = np.arange(len(frames)) if sample_indices_fn is None else sample_indices_fn(metadata=metadata)
                frames = frames[torch.as_tensor(indices) if isinstance(frames, torch.Tensor) else indices]
                metadata.frames_indices = np.asarray(indices).tolist()
            sampled_videos.append(frames)
            sampled_metadata.append(metadata)
        return sampled_videos, sampled_metadata

    def _preprocess(self, videos: list[torch.Tensor], return_tensors=None, **kwargs) -> BatchFeature:
        """Resize, rescale and normalise each (num_frames, 3, height, width) video, then pad them into one tensor."""
        processed = super()._preprocess(videos, return_tensors=None, **kwargs)["pixel_values_videos"]
        if return_tensors is None:
            return BatchFeature({"pixel_values_videos": processed, "video_num_frames": [len(v) for v in processed]})
        return BatchFeature(pad_videos(processed), tensor_type=return_tensors)


def _frame_to_array(frame) -> np.ndarray:
    """A frame of a list-of-frames video as an array; PIL images are converted to RGB first."""
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
    samples = [videos[start:end] for start, end in zip(starts[:-1], starts[1:])]
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
