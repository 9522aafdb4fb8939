"""JPEG decode on the encoder's device: the embed job's ``--gpu-decode`` option.

On a GPU node the CPU decode tasks, not the GPU, bound throughput: a ViT-B-32 in fp16
embeds thousands of images a second, a CPU core decodes and resizes a few hundred. With
this option the decode tasks only check each JPEG's header (allow-list, byte and pixel
caps, colour mode, orientation) and ship the compressed bytes, several times smaller than
the pixels; the encoder actor decodes a whole batch with nvJPEG
(``torchvision.io.decode_jpeg(device="cuda")``) and resizes and crops on the GPU.

Only what the device path does exactly like the CPU path goes there: baseline RGB or
greyscale JPEGs without an EXIF rotation (nvJPEG cannot apply one) and models whose
preprocessing is the common square shortest-side resize + centre crop. Everything else,
and any JPEG nvJPEG refuses, is decoded by the CPU code, with the same rejection reasons.
The resize is torchvision's antialiased tensor resize, which differs from PIL's by a
rounding step (embeddings agree to cosine > 0.99; tested).
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Optional, Sequence

from PIL import Image

from pixlake.platform.encoder import PreprocessSpec
from pixlake.platform.images import DecodeLimits

log = logging.getLogger(__name__)

_JPEG_MAGIC, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_EXIF_ORIENTATION = 0x0112
_DEVICE_MODES = {"RGB", "L"}  # nvJPEG's RGB output equals PIL's convert("RGB") for these


# Where a job decodes (the job report's ``decode``): CPU tasks, or the encoder actors for
# JPEGs, on their GPU or, on a cluster without one, on their CPU (same code, for testing).
DECODE_CPU_TASKS, DECODE_GPU_JPEG, DECODE_ENCODER_CPU_JPEG = "cpu-tasks", "gpu-jpeg", "encoder-cpu-jpeg"


def decode_placement(gpu_decode: bool, gpus: int, preprocess: PreprocessSpec) -> str:
    """Where a job decodes, given its ``gpu_decode`` setting, the cluster's GPUs and the model."""
    if not gpu_decode:
        return DECODE_CPU_TASKS
    if square_side(preprocess) is None:
        log.warning("--gpu-decode ignored: the device path does not reproduce this model's preprocessing %s", preprocess)
        return DECODE_CPU_TASKS
    if not gpus:
        log.warning("--gpu-decode without a GPU in the cluster: the encoder actors decode JPEGs on their CPU")
        return DECODE_ENCODER_CPU_JPEG
    return DECODE_GPU_JPEG


def square_side(preprocess: PreprocessSpec) -> Optional[int]:
    """The side the device path resizes and crops to, or ``None`` when the model's
    preprocessing is one the device path does not reproduce."""
    size = preprocess.size
    side = size if isinstance(size, int) else (size[0] if size[0] == size[1] else None)
    ok = side is not None and preprocess.resize_mode == "shortest" and preprocess.interpolation in ("bicubic", "bilinear")
    return side if ok else None


def device_decodable(data: bytes, limits: DecodeLimits) -> bool:
    """True when ``data`` is a JPEG that the encoder may decode on its device.

    Parses the header only (no pixel decode), so a decode task does a fraction of its
    usual work. False sends the bytes down the CPU path, which names any problem.
    """
    # No end-of-image marker: likely truncated, which nvJPEG may decode to grey where PIL
    # rejects it. The CPU path decides (and valid files with trailing bytes just go there).
    if not (data.startswith(_JPEG_MAGIC) and data.endswith(_JPEG_END)) or len(data) > limits.max_bytes:
        return False
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            width, height = img.size
            if not 0 < width * height <= limits.max_pixels or img.mode not in _DEVICE_MODES:
                return False
            return img.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except Exception:  # noqa: BLE001 - anything odd goes to the CPU path, which reports it
        return False


class DeviceJpegDecoder:
    """Decode JPEG bytes into the model's uint8 input pixels on ``device``.

    Args:
        preprocess: the encoder's preprocessing (must pass :func:`square_side`).
        device: torch device; ``cuda`` uses nvJPEG, ``cpu`` libjpeg-turbo (same code path).
    """

    def __init__(self, preprocess: PreprocessSpec, device: str):
        from torchvision.transforms import InterpolationMode

        side = square_side(preprocess)
        if side is None:
            raise ValueError(f"device JPEG decode does not reproduce preprocessing {preprocess}")
        self.side, self.device = side, device
        self.interpolation = InterpolationMode.BICUBIC if preprocess.interpolation == "bicubic" else InterpolationMode.BILINEAR

    def __call__(self, datas: Sequence[bytes]) -> list[Optional[Any]]:
        """Decode a batch: one ``(side, side, 3)`` uint8 tensor on the device per input,
        or ``None`` where the decoder refused the bytes (the caller decodes those on CPU)."""
        import torch

        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec; pinned here, so not yet our concern.
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                # One bad image fails the whole batch call: find it, keep the rest.
                images = [self._one(decode_jpeg, t, ImageReadMode.RGB) for t in encoded]
        return [None if im is None else self._resize_crop(im) for im in images]

    def _one(self, decode_jpeg: Any, encoded: Any, mode: Any) -> Optional[Any]:
        try:
            return decode_jpeg(encoded, mode=mode, device=self.device)
        except RuntimeError as e:
            log.debug("device decode refused an image: %s", e)
            return None

    def _resize_crop(self, image: Any) -> Any:
        """(3, H, W) uint8 → (side, side, 3) uint8: torchvision's Resize(side) + CenterCrop(side)."""
        from torchvision.transforms.v2 import functional as F

        if min(image.shape[-2:]) != self.side:
            image = F.resize(image, [self.side], interpolation=self.interpolation, antialias=True)
        return F.center_crop(image, [self.side, self.side]).permute(1, 2, 0)
