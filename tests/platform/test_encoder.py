"""Tests for pixlake.platform.encoder with the tiny bundled open_clip config (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixlake.platform.encoder import Encoder, default_device, load_encoder, register_bundled_configs
from pixlake.platform.errors import ModelError
from tests.conftest import TINY

DIM = 32
TEXTS = ["a red circle", "a small blue square on a white background", "", "ünïcödé téxt ✓", "word " * 100]


def _images() -> list[Image.Image]:
    """Synthetic RGB images of various sizes and aspect ratios (square, wide, tall, tiny, odd)."""
    rng = np.random.default_rng(7)
    sizes = [(32, 32), (96, 96), (200, 50), (41, 173), (7, 5), (640, 481), (33, 31)]
    out = []
    for w, h in sizes:
        # smooth gradient plus noise, so resampling differences would show
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
        noise = rng.integers(0, 60, size=(h, w, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return out


def _assert_unit_rows(x: np.ndarray, n: int):
    assert x.dtype == np.float32
    assert x.shape == (n, DIM)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_encoder: Encoder) -> Path:
    """The tiny model's seeded weights saved as a plain state_dict checkpoint."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({k: v.detach().cpu().clone() for k, v in tiny_encoder.model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def perturbed_checkpoint(tmp_path_factory, tiny_encoder: Encoder) -> Path:
    """The same weights with seeded noise added to every float tensor."""
    import torch

    gen = torch.Generator().manual_seed(123)
    sd = {}
    for k, v in tiny_encoder.model.state_dict().items():
        v = v.detach().cpu().clone()
        if v.is_floating_point():
            v = v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        sd[k] = v
    path = tmp_path_factory.mktemp("ckpt") / "perturbed.pt"
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def reference(checkpoint: Path):
    """open_clip used directly (full eval transform, tokenizer), from the same checkpoint."""
    import open_clip

    register_bundled_configs()
    model, _, preprocess_val = open_clip.create_model_and_transforms(TINY[0], pretrained=str(checkpoint), device="cpu")
    model.eval()
    return model, preprocess_val, open_clip.get_tokenizer(TINY[0])


# --- shapes, dtype, normalisation --------------------------------------------------------


def test_default_device_is_cpu_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert default_device() == "cpu"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA device (runs on the GPU machine)")
def test_a_gpu_is_chosen_by_itself_and_half_precision_agrees_with_cpu():
    import torch

    from pixlake.platform.encoder import BUNDLED_TAG

    gpu = load_encoder("pixlake-demo", BUNDLED_TAG)
    cpu = load_encoder("pixlake-demo", BUNDLED_TAG, device="cpu")
    assert gpu.device.startswith("cuda") and gpu.dtype == torch.float16
    assert next(gpu.model.parameters()).dtype == torch.float16
    assert gpu.fingerprint == cpu.fingerprint  # the same weights, whatever the device
    images = _images()
    assert _cosines(gpu.embed_images(images), cpu.embed_images(images)).min() > 0.999
    assert _cosines(gpu.embed_texts(TEXTS), cpu.embed_texts(TEXTS)).min() > 0.999


def test_tiny_encoder_attributes(tiny_encoder: Encoder):
    assert tiny_encoder.dim == DIM
    assert tiny_encoder.device == "cpu"
    assert tiny_encoder.model_name == TINY[0]
    assert tiny_encoder.fingerprint.startswith(f"{TINY[0]}:")
    assert len(tiny_encoder.fingerprint.split(":", 1)[1]) == 16
    assert tiny_encoder.preprocess.size in (32, (32, 32))


def test_image_embeddings_are_unit_float32(tiny_encoder: Encoder):
    images = _images()
    _assert_unit_rows(tiny_encoder.embed_images(images), len(images))


def test_text_embeddings_are_unit_float32(tiny_encoder: Encoder):
    _assert_unit_rows(tiny_encoder.embed_texts(TEXTS), len(TEXTS))


def test_distinct_inputs_give_distinct_embeddings(tiny_encoder: Encoder):
    img = tiny_encoder.embed_images(_images()[:3])
    txt = tiny_encoder.embed_texts(TEXTS[:2])
    assert not np.allclose(img[0], img[1])
    assert not np.allclose(txt[0], txt[1])


def test_empty_inputs(tiny_encoder: Encoder):
    for out in (tiny_encoder.embed_images([]), tiny_encoder.embed_texts([])):
        assert out.shape == (0, DIM)
        assert out.dtype == np.float32


def test_batching_does_not_change_embeddings(tiny_encoder: Encoder):
    images = _images()
    together = tiny_encoder.embed_images(images)
    alone = np.concatenate([tiny_encoder.embed_images([im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_prepare_gives_uint8_pixels_at_model_size(tiny_encoder: Encoder):
    for im in _images():
        px = tiny_encoder.prepare(im)
        assert px.dtype == np.uint8
        assert px.shape == (32, 32, 3)


def test_prepare_plus_embed_pixels_equals_embed_images(tiny_encoder: Encoder):
    images = _images()
    pixels = np.stack([tiny_encoder.prepare(im) for im in images])
    np.testing.assert_array_equal(tiny_encoder.embed_pixels(pixels), tiny_encoder.embed_images(images))


# --- determinism and fingerprints -------------------------------------------------------


def test_random_weights_are_deterministic(tiny_encoder: Encoder):
    import torch

    torch.manual_seed(999)  # global RNG state must not matter
    again = load_encoder(*TINY, device="cpu")
    assert again.fingerprint == tiny_encoder.fingerprint
    images = _images()[:3]
    np.testing.assert_array_equal(again.embed_images(images), tiny_encoder.embed_images(images))
    np.testing.assert_array_equal(again.embed_texts(TEXTS), tiny_encoder.embed_texts(TEXTS))


@pytest.mark.parametrize("alias", ["random", "", "NONE"])
def test_no_weights_aliases(alias: str, tiny_encoder: Encoder):
    assert load_encoder(TINY[0], alias, device="cpu").fingerprint == tiny_encoder.fingerprint


def test_same_weights_from_checkpoint_same_fingerprint(checkpoint: Path, tiny_encoder: Encoder):
    enc = load_encoder(TINY[0], str(checkpoint), device="cpu")
    assert enc.fingerprint == tiny_encoder.fingerprint
    images = _images()[:3]
    np.testing.assert_allclose(enc.embed_images(images), tiny_encoder.embed_images(images), atol=1e-6)


def test_a_checkpoint_missing_a_weight_fails_although_random_init_is_skipped(tmp_path: Path, checkpoint: Path):
    """Building for a checkpoint skips torch's random init; a weight the checkpoint lacks must
    then fail the load (open_clip's strict load), not stay uninitialised memory."""
    import torch

    sd = torch.load(checkpoint, weights_only=True)
    del sd["visual.proj" if "visual.proj" in sd else sorted(sd)[-1]]
    path = tmp_path / "missing_key.pt"
    torch.save(sd, path)
    before = torch.nn.init.normal_
    with pytest.raises(ModelError, match="Missing key"):
        load_encoder(TINY[0], str(path), device="cpu")
    assert torch.nn.init.normal_ is before  # restored after the failed build
    x = torch.nn.init.normal_(torch.zeros(1000))
    assert x.std() > 0.5  # and draws again


def test_fingerprint_changes_with_weights(perturbed_checkpoint: Path, tiny_encoder: Encoder):
    enc = load_encoder(TINY[0], str(perturbed_checkpoint), device="cpu")
    assert enc.fingerprint.startswith(f"{TINY[0]}:")
    assert enc.fingerprint != tiny_encoder.fingerprint
    images = _images()[:3]
    assert not np.allclose(enc.embed_images(images), tiny_encoder.embed_images(images), atol=1e-3)


# --- parity with open_clip's own transform and tokenizer ---------------------------------


def test_image_embeddings_match_open_clip(checkpoint: Path, reference):
    import torch

    model, preprocess_val, _ = reference
    enc = load_encoder(TINY[0], str(checkpoint), device="cpu")
    images = _images()
    ours = enc.embed_images(images)
    with torch.inference_mode():
        x = torch.stack([preprocess_val(im) for im in images])
        theirs = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).numpy()
    cos = _cosines(ours, theirs)
    assert cos.min() >= 0.999, cos


def test_split_preprocessing_matches_open_clip_tensor(checkpoint: Path, reference):
    """The PIL half plus the tensor half reproduce open_clip's preprocess_val closely."""
    import torch

    _, preprocess_val, _ = reference
    enc = load_encoder(TINY[0], str(checkpoint), device="cpu")
    mean = torch.tensor(enc.preprocess.mean).view(3, 1, 1)
    std = torch.tensor(enc.preprocess.std).view(3, 1, 1)
    for im in _images():
        ours = (torch.from_numpy(np.array(enc.prepare(im))).permute(2, 0, 1).float() / 255.0 - mean) / std
        theirs = preprocess_val(im)
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_text_embeddings_match_open_clip(checkpoint: Path, reference):
    import torch

    model, _, tokenizer = reference
    enc = load_encoder(TINY[0], str(checkpoint), device="cpu")
    ours = enc.embed_texts(TEXTS)
    with torch.inference_mode():
        theirs = torch.nn.functional.normalize(model.encode_text(tokenizer(TEXTS)).float(), dim=-1).numpy()
    cos = _cosines(ours, theirs)
    assert cos.min() >= 0.999, cos


# --- errors ------------------------------------------------------------------------------


def test_unknown_model_name():
    with pytest.raises(ModelError) as info:
        load_encoder("no-such-model-xyz", "none", device="cpu")
    msg = str(info.value)
    assert "unknown model" in msg and "no-such-model-xyz" in msg


def test_unknown_model_name_suggests_close_match():
    with pytest.raises(ModelError, match="did you mean.*pixlake-tiny"):
        load_encoder("pixlake-tinny", "none", device="cpu")


def test_unknown_pretrained_tag_for_real_model():
    with pytest.raises(ModelError) as info:
        load_encoder("ViT-B-32", "nope", device="cpu")
    msg = str(info.value)
    assert "'nope'" in msg and "ViT-B-32" in msg
    assert "laion2b_s34b_b79k" in msg  # lists the known tags


def test_missing_checkpoint_path(tmp_path: Path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(ModelError) as info:
        load_encoder(TINY[0], str(missing), device="cpu")
    assert "checkpoint not found" in str(info.value)
    assert str(missing) in str(info.value)


def test_corrupt_checkpoint_is_model_error(tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ModelError) as info:
        load_encoder(TINY[0], str(bad), device="cpu")
    assert TINY[0] in str(info.value)


def test_checkpoint_of_another_architecture_is_model_error(tmp_path: Path, checkpoint: Path):
    import torch

    sd = torch.load(checkpoint, weights_only=True)
    sd["text_projection"] = torch.zeros(64, 16)  # wrong shape
    path = tmp_path / "wrong_shape.pt"
    torch.save(sd, path)
    with pytest.raises(ModelError):
        load_encoder(TINY[0], str(path), device="cpu")


# --- the check before Ray starts ------------------------------------------------------


def test_check_reads_every_registered_config_as_open_clip_does():
    """The torch-free lookup agrees with open_clip's registry for every name it knows,
    the project's own configs included (which take precedence there too)."""
    import open_clip

    from pixlake.platform.encoder import _config_file

    register_bundled_configs()
    names = open_clip.list_models()
    assert TINY[0] in names and "ViT-B-32" in names
    for name in names:
        assert _config_file(name) == open_clip.get_model_config(name), name


@pytest.mark.parametrize("name", ["../pixlake-tiny", "hf-hub:org/model", "local-dir:/tmp", "no-such-model-xyz"])
def test_check_leaves_other_names_to_open_clip(name):
    from pixlake.platform.encoder import _config_file

    assert _config_file(name) is None


def test_check_model_returns_the_width_load_encoder_gives(tiny_encoder: Encoder, checkpoint: Path):
    from pixlake.platform.encoder import check_model

    assert check_model(TINY[0], "none") == check_model(TINY[0], str(checkpoint)) == tiny_encoder.dim
    assert check_model("ViT-B-32", "none") == 512
    with pytest.raises(ModelError, match="did you mean.*pixlake-tiny"):
        check_model("pixlake-tinny", "none")
    with pytest.raises(ModelError, match="'nope'"):
        check_model("ViT-B-32", "nope")


@pytest.mark.slow  # a subprocess: the only place where torch is not imported yet
def test_check_model_imports_no_torch_for_a_path_or_random_weights(tmp_path: Path):
    """A job checks the model before starting Ray; importing open_clip (torch) there cost ~3 s."""
    import subprocess
    import sys

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")  # only its existence is checked
    code = ("import sys; from pixlake.platform.encoder import check_model; "
            f"print(check_model('ViT-B-32', 'none'), check_model('pixlake-demo', 'bundled'), check_model('ViT-B-32', {str(ckpt)!r}), "
            "'torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["512", "64", "512", "False", "False"]


@pytest.mark.parametrize("size", [(97, 61), (40, 160), (32, 32), (1, 1), (33, 32), (500, 81), (3, 1000)])
def test_torch_free_pil_half_matches_open_clip_pixel_for_pixel(tiny_encoder, size):
    """Decode workers use a plain-PIL resize+crop; it must equal open_clip's own transforms."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image
    from torchvision.transforms import ToTensor

    from pixlake.platform.encoder import _ShortestSideCrop

    fast = tiny_encoder.preprocess.pil_transform()
    assert isinstance(fast, _ShortestSideCrop)
    full = image_transform_v2(PreprocessCfg(mode="RGB", **asdict(tiny_encoder.preprocess)), is_train=False)
    image = Image.fromarray((np.random.default_rng(sum(size)).random((size[1], size[0], 3)) * 255).astype("uint8"))
    reference = image
    for step in full.transforms:
        if isinstance(step, ToTensor):
            break
        reference = step(reference)
    assert np.array_equal(fast(image), np.asarray(reference))
