"""open_clip behind one loader: images and texts in, L2-normalised float32 vectors out.

Preprocessing is split in two so the heavy part runs where it belongs: the PIL half
(resize, crop) runs in CPU decode tasks and ships compact uint8 pixels; the tensor half
(scale, normalise) runs beside the model, on the GPU when there is one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from pixlake.platform.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
# Random weights ("none") are drawn from this seed so every actor of a job, and every
# re-run, builds the same model and the fingerprint means something.
RANDOM_WEIGHTS_SEED = 0
# `--pretrained bundled`: weights shipped in the package (the demo model, see `make demo-model`).
BUNDLED_TAG = "bundled"
BUNDLED_WEIGHTS = Path(__file__).parent / "weights"
_NO_WEIGHTS = {"", "none", "random"}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")

_registered = False


def register_bundled_configs() -> None:
    """Make the project's model configs (``model_configs/*.json``) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(BUNDLED_CONFIGS)
        _registered = True


def default_device() -> str:
    """CUDA when present, else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class PreprocessSpec:
    """What a decode task needs to prepare pixels for a model, without loading it."""

    size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    fill_color: int

    def pil_transform(self) -> Callable[[Any], np.ndarray]:
        """Return the PIL half of open_clip's eval transform: PIL RGB image → uint8 HWC array.

        The common case (square input, shortest-side resize, bicubic or bilinear) is done
        in plain PIL, pixel for pixel what torchvision does, so decode workers need not
        import torch; other modes use open_clip's own transforms.
        """
        side = self.size if isinstance(self.size, int) else (self.size[0] if self.size[0] == self.size[1] else None)
        if side is not None and self.resize_mode == "shortest" and self.interpolation in ("bicubic", "bilinear"):
            return _ShortestSideCrop(side, self.interpolation)
        from open_clip.transform import PreprocessCfg, image_transform_v2
        from torchvision.transforms import ToTensor

        full = image_transform_v2(PreprocessCfg(mode="RGB", **asdict(self)), is_train=False)
        steps = []
        for t in full.transforms:
            if isinstance(t, ToTensor):
                break
            steps.append(t)

        def apply(image: Any) -> np.ndarray:
            for t in steps:
                image = t(image)
            return np.asarray(image, dtype=np.uint8)

        return apply


class _ShortestSideCrop:
    """torchvision's ``Resize(side)`` + ``CenterCrop(side)`` on PIL images, without torch."""

    def __init__(self, side: int, interpolation: str):
        from PIL import Image

        self.side = side
        self.resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR

    def __call__(self, image: Any) -> np.ndarray:
        side, (w, h) = self.side, image.size
        # Same arithmetic as torchvision's _compute_resized_output_size and center_crop.
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(side * long / short)
        new_w, new_h = (side, new_long) if w <= h else (new_long, side)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), self.resample)
        top, left = int(round((new_h - side) / 2.0)), int(round((new_w - side) / 2.0))
        return np.asarray(image.crop((left, top, left + side, top + side)).convert("RGB"), dtype=np.uint8)


def _config(model_name: str) -> dict:
    import open_clip

    register_bundled_configs()
    config = open_clip.get_model_config(model_name)
    if config is None:
        import difflib

        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"unknown model {model_name!r}{hint}; open_clip.list_models() lists all")
    return config


def _config_file(model_name: str) -> Optional[dict]:
    """A plain model name's config read from the JSON files open_clip registers (the project's
    own taking precedence, as in open_clip's registry), without importing open_clip: its import
    (torch and torchvision included) takes seconds, which a job would spend before Ray starts.
    None when the name needs open_clip itself (``hf-hub:``, ``local-dir:``, or not found)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("open_clip")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations or not re.fullmatch(r"[\w.\-]+", model_name):
        return None
    for folder in (BUNDLED_CONFIGS, Path(spec.submodule_search_locations[0]) / "model_configs"):
        path = folder / f"{model_name}.json"
        if path.is_file():
            config = json.loads(path.read_text())
            if all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
                return config
    return None


def _is_tag(pretrained: Optional[str]) -> bool:
    """True when --pretrained names a published open_clip tag (not none, bundled or a path)."""
    return not (pretrained is None or pretrained.strip().lower() in _NO_WEIGHTS or pretrained == BUNDLED_TAG
                or os.path.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES))


def _resolve_weights(model_name: str, pretrained: Optional[str]) -> Optional[str]:
    """Map --pretrained to what open_clip takes; None means random weights."""
    if pretrained is None or pretrained.strip().lower() in _NO_WEIGHTS:
        return None
    if pretrained == BUNDLED_TAG:
        path = BUNDLED_WEIGHTS / f"{model_name}.pt"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in BUNDLED_WEIGHTS.glob("*.pt"))) or "none"
            raise ModelError(f"no bundled weights for {model_name} (bundled: {shipped})")
        return str(path)
    if not _is_tag(pretrained):  # a checkpoint path
        if not Path(pretrained).is_file():
            raise ModelError(f"checkpoint not found: {pretrained}")
        return pretrained
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        known = ", ".join(tags) or "none published"
        raise ModelError(
            f"unknown pretrained tag {pretrained!r} for {model_name} (known: {known}); "
            "or pass a local checkpoint path, 'none' for random weights, or use the offline demo model "
            "(--model pixlake-demo --pretrained bundled)"
        )
    if not _hub_resolves():
        # Without this the hub client retries for about a minute before failing;
        # offline mode still serves weights that are already in the local cache.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
    return pretrained


def _hub_resolves(host: str = "huggingface.co") -> bool:
    import socket

    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def fingerprint_of(model_name: str, config: dict, state_dict: dict) -> str:
    """Hash architecture config and weights into a short, stable encoder fingerprint.

    Args:
        model_name: open_clip config name, kept readable in the fingerprint.
        config: the architecture config dict.
        state_dict: model weights (float32, CPU).

    Returns:
        ``"<model_name>:<16 hex chars>"``.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy())  # its buffer: no copy of the weights
    return f"{model_name}:{h.hexdigest()[:16]}"


class Encoder:
    """A loaded open_clip model. Build with :func:`load_encoder`."""

    def __init__(
        self, model_name: str, model: Any, tokenizer: Any, preprocess: PreprocessSpec, fingerprint: str, dim: int, device: str
    ):
        import torch

        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.fingerprint = fingerprint
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.dim = dim
        self._pil = preprocess.pil_transform()
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)

    def prepare(self, image: Any) -> np.ndarray:
        """PIL RGB image → uint8 HWC pixels at the model's input size (the CPU half)."""
        return self._pil(image)

    def embed_pixels(self, pixels: Any, with_norms: bool = False) -> Any:
        """Embed prepared pixels.

        Args:
            pixels: uint8 (N, H, W, 3) from :meth:`prepare`: a numpy array, or a torch
                tensor (already on the device when the JPEGs were decoded there).
            with_norms: also return the raw features' L2 norms (drift statistics).

        Returns:
            float32 array (N, dim), each row L2-normalised; with ``with_norms``, a pair
            ``(vectors, norms)``. A NaN or Inf feature gives a non-finite row: callers reject it.
        """
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(self.pixel_tensor(pixels).to(self.dtype)).float()
            vectors = _normalise(features)
            if not with_norms:
                return vectors
            return vectors, torch.linalg.vector_norm(features, dim=-1).cpu().numpy().astype(np.float32)

    def pixel_tensor(self, pixels: Any) -> Any:
        """uint8 (N, H, W, 3) pixels (numpy or torch) → the model's normalised float32 (N, 3, H, W) input on its device."""
        import torch

        if isinstance(pixels, torch.Tensor):
            x = pixels.to(self.device)
        else:
            x = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"])).to(self.device)  # copies only if read-only
        return (x.permute(0, 3, 1, 2).float().div_(255.0) - self._mean) / self._std

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed decoded PIL RGB images; float32 (N, dim), L2-normalised."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(np.stack([self.prepare(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; float32 (N, dim), L2-normalised."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return _normalise(self.model.encode_text(tokens))


def _normalise(features: Any) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


_BUILDING = threading.Lock()  # skipping the random init patches torch for the whole process: one build at a time


@contextlib.contextmanager
def _building(skip_random_init: bool):
    """Build one model at a time; with ``skip_random_init``, torch's ``nn.init`` functions do
    nothing while it is built.

    A checkpoint overwrites every weight: open_clip loads it with ``strict=True``, so a weight
    it lacks fails the load rather than stay uninitialised (``.npz`` big_vision weights load
    another way and are left alone). Drawing the random values it replaces took 0.85 s of
    ViT-B-32's 1.0 s build on this CPU, paid by the driver and again by every encoder actor
    before its first batch.
    """
    import torch

    with _BUILDING:
        if not skip_random_init:
            yield
            return
        names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
        saved = {n: getattr(torch.nn.init, n) for n in names}
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for n, fn in saved.items():
                setattr(torch.nn.init, n, fn)


def check_model(model_name: str, pretrained: Optional[str]) -> int:
    """Fail fast on an unknown model or tag, or a missing checkpoint, without loading weights.

    A known model with a checkpoint path, bundled or random weights is checked without
    importing open_clip, so a job need not wait for that import before starting Ray.

    Returns:
        The model's embedding width.

    Raises:
        ModelError: as :func:`load_encoder` would, in a fraction of the time.
    """
    config = None if _is_tag(pretrained) else _config_file(model_name)
    config = config or _config(model_name)
    _resolve_weights(model_name, pretrained)
    return int(config["embed_dim"])


def load_encoder(model_name: str, pretrained: Optional[str], device: Optional[str] = None) -> Encoder:
    """Load an open_clip model with its tokenizer, preprocessing and fingerprint.

    Args:
        model_name: an open_clip config name (bundled ones included, e.g. ``pixlake-tiny``).
        pretrained: an open_clip tag, a local checkpoint path, or ``none`` (seeded random weights).
        device: torch device; default CUDA (half precision) when available, else CPU.

    Returns:
        The ready encoder, in eval mode.

    Raises:
        ModelError: unknown model or tag, missing checkpoint, or weights that cannot be
            downloaded (offline); the message names the fix.
    """
    import open_clip
    import torch

    config = _config(model_name)
    weights = _resolve_weights(model_name, pretrained)
    device = device or default_device()
    try:
        with _building(skip_random_init=weights is not None and not weights.endswith((".npz", ".npy"))):
            if weights is None:
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights, device="cpu")
    except ModelError:
        raise
    except Exception as e:
        if weights is not None and not Path(weights).is_file():
            raise ModelError(
                f"could not fetch weights {model_name}/{weights}: not in the local cache and the hub is "
                f"unreachable ({type(e).__name__}). Fix: download the checkpoint where there is network "
                f"and pass --pretrained /path/to/checkpoint"
            ) from e
        raise ModelError(f"could not load {model_name} with weights {weights or 'none'}: {e}") from e
    model.eval()
    fingerprint = fingerprint_of(model_name, config, model.state_dict())
    cfg = model.visual.preprocess_cfg
    preprocess = PreprocessSpec(
        size=cfg["size"],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
        fill_color=cfg.get("fill_color", 0),
    )
    model = model.to(device)
    if device.startswith("cuda"):
        model = model.half()
    tokenizer = open_clip.get_tokenizer(model_name)
    log.info("loaded %s on %s (fingerprint %s)", model_name, device, fingerprint)
    return Encoder(model_name, model, tokenizer, preprocess, fingerprint, int(config["embed_dim"]), device)
