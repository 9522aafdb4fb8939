"""The ``--gpu-decode`` path: header checks in decode tasks, JPEG decode on the encoder's
device. CI has no GPU, so the decoder runs with ``device="cpu"`` — the same code, with
torchvision's libjpeg-turbo in place of nvJPEG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pixlake.platform.corpus import write_corpus
from pixlake.platform.images.device import (
    DECODE_CPU_TASKS,
    DECODE_ENCODER_CPU_JPEG,
    DECODE_GPU_JPEG,
    DeviceJpegDecoder,
    decode_placement,
    device_decodable,
)
from pixlake.platform.encoder import BUNDLED_TAG, load_encoder
from pixlake.platform.images import DecodeLimits
from pixlake.platform.pipeline.decode import prepare_pixels
from tests.badinputs import write_bad_input_corpus


def _jpeg(size=(96, 64), seed=0, mode="RGB", **save) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth content (a photo, not noise), so the two resizes are comparable.
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    base = np.stack([np.sin(xx * rng.uniform(2, 9) + c) * np.cos(yy * rng.uniform(2, 9)) for c in range(3)], -1)
    img = Image.fromarray(((base + 1) * 127.5).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def test_only_plain_complete_jpegs_within_the_caps_go_to_the_device(tmp_path):
    limits = DecodeLimits()
    assert device_decodable(_jpeg(), limits)
    assert device_decodable(_jpeg(mode="L"), limits)
    must_embed, must_reject = write_bad_input_corpus(tmp_path)
    decodable = {name for name, p in {**must_embed, **must_reject}.items() if device_decodable(p.read_bytes(), limits)}
    # CMYK (colour conversion), EXIF-rotated (nvJPEG cannot rotate), truncated (no end
    # marker), and everything that is not a JPEG stay on the CPU path.
    assert decodable == set(), decodable
    assert not device_decodable(_jpeg(), DecodeLimits(max_pixels=96 * 64 - 1))
    assert not device_decodable(_jpeg(), DecodeLimits(max_bytes=100))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# CI has no GPU; on a GPU machine the same checks run against nvJPEG too.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _cuda(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_device_pixels_match_the_cpu_path(tiny_encoder, device):
    decoder = DeviceJpegDecoder(tiny_encoder.preprocess, device)
    side = decoder.side
    datas = [_jpeg((w, h), seed=i) for i, (w, h) in enumerate([(96, 64), (40, 160), (side, side), (300, 301)])]
    out = decoder(datas)
    for data, pixels in zip(datas, out):
        assert pixels is not None and tuple(pixels.shape) == (side, side, 3) and str(pixels.dtype) == "torch.uint8"
        cpu = prepare_pixels(data, DecodeLimits(), tiny_encoder.prepare).astype(int)
        assert pixels.device.type == device
        diff = np.abs(pixels.cpu().numpy().astype(int) - cpu)
        # Two JPEG decoders and two bicubic resizes: a few levels apart, not a shifted crop.
        # nvJPEG rounds further from libjpeg-turbo (on an H200: mean 5.8, 99th percentile 17
        # levels); the embeddings still agree (next test).
        mean_cap, p99_cap = (2.0, 12) if device == "cpu" else (8.0, 24)
        stats = (diff.mean(), np.percentile(diff, [50, 90, 99]), diff.max())
        assert diff.mean() < mean_cap and np.percentile(diff, 99) <= p99_cap, stats


@pytest.mark.parametrize("device", DEVICES)
def test_a_bad_jpeg_in_a_batch_costs_only_itself(tiny_encoder, device):
    decoder = DeviceJpegDecoder(tiny_encoder.preprocess, device)
    good = _jpeg()
    broken = good[:40] + bytes(200) + good[240:]  # a wrecked header and scan, end marker kept
    out = decoder([good, broken, good])
    assert out[0] is not None and out[2] is not None
    assert out[1] is None or tuple(out[1].shape) == tuple(out[0].shape)  # refused, or decoded as garbage
    assert np.array_equal(out[0].cpu().numpy(), out[2].cpu().numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_embeddings_from_device_decode_agree_with_the_cpu_path(tmp_path, device):
    encoder = load_encoder("pixlake-demo", BUNDLED_TAG, device=device)
    write_corpus(tmp_path, 12, seed=4)
    datas = []
    for p in sorted((tmp_path / "images").glob("*.png")):
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    on_device = np.stack([p.cpu().numpy() for p in DeviceJpegDecoder(encoder.preprocess, device)(datas)])
    cpu = np.stack([prepare_pixels(d, DecodeLimits(), encoder.prepare) for d in datas])
    cos = np.sum(encoder.embed_pixels(on_device) * encoder.embed_pixels(cpu), axis=1)
    assert cos.min() > 0.99, cos


@pytest.mark.parametrize(
    "requested,gpus,expected",
    [(False, 1, DECODE_CPU_TASKS), (True, 1, DECODE_GPU_JPEG), (True, 0, DECODE_ENCODER_CPU_JPEG), (False, 0, DECODE_CPU_TASKS)],
)
def test_decode_placement(tiny_encoder, requested, gpus, expected):
    assert decode_placement(requested, gpus, tiny_encoder.preprocess) == expected


def test_preprocessing_the_device_cannot_reproduce_keeps_decode_on_cpu(tiny_encoder):
    from dataclasses import replace

    squash = replace(tiny_encoder.preprocess, resize_mode="squash")
    assert decode_placement(True, 1, squash) == DECODE_CPU_TASKS
    with pytest.raises(ValueError):
        DeviceJpegDecoder(squash, "cpu")
