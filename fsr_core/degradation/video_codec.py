"""H.264 round trip of one image through PyAV, for the ``h264`` degradation op
(:class:`fsr_core.degradation.ops.H264`): the encoder PyAV's FFmpeg offers, and one intra frame
encoded and decoded back deterministically."""

from __future__ import annotations

import functools
from fractions import Fraction

import cv2
import numpy as np

__all__ = ["h264_encoder", "h264_round_trip"]


@functools.lru_cache(maxsize=1)
def h264_encoder() -> tuple[str, str]:
    """``(encoder, how crf is passed)`` for the ``h264`` op: PyAV's ``libx264`` with its ``crf``, else
    ``libopenh264`` with the quantiser pinned to ``crf`` (``qmin = qmax``). RuntimeError naming what
    is missing when PyAV's FFmpeg has neither, or no H.264 decoder."""
    import av

    available = av.codecs_available
    if "h264" not in available:
        raise RuntimeError("the h264 op needs FFmpeg's h264 decoder, which this PyAV build lacks")
    if "libx264" in available:
        return "libx264", "crf"
    if "libopenh264" in available:
        return "libopenh264", "qp"
    raise RuntimeError(
        "the h264 op needs an H.264 encoder in PyAV: neither libx264 nor libopenh264 is in "
        "av.codecs_available (install a PyAV wheel or FFmpeg built with libx264)"
    )


def h264_round_trip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """Encode ``uint8 [H, W, 3]`` RGB as one H.264 intra frame (yuv420p, one thread, deterministic)
    and decode it back; odd sides are padded by edge replication and cropped afterwards."""
    import av

    encoder, rate_control = h264_encoder()
    height, width = rgb.shape[:2]
    padded = cv2.copyMakeBorder(rgb, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
    context = av.CodecContext.create(encoder, "w")
    context.width, context.height = padded.shape[1], padded.shape[0]
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 25)
    context.thread_count = 1
    if rate_control == "crf":
        context.options = {"crf": str(crf), "preset": "medium"}
    else:
        context.qmin = context.qmax = crf
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    packets = list(context.encode(frame)) + list(context.encode(None))
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    frames = [decoded for packet in packets for decoded in decoder.decode(packet)] + list(decoder.decode(None))
    if len(frames) != 1:
        raise RuntimeError(f"H.264 round trip via {encoder} gave {len(frames)} frames, expected 1")
    return frames[0].to_ndarray(format="rgb24")[:height, :width]
