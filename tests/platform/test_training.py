"""Contrastive training: the loss falls, the checkpoint is an open_clip checkpoint the
platform loads, and an interrupted run resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch

from pixlake.platform.corpus import write_corpus
from pixlake.platform.errors import ConfigError, SourceError
from pixlake.platform.training import MODEL_FILE, STATE_FILE, TrainSettings, train


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-corpus")
    write_corpus(out, 80, seed=2, holdout=0.2)
    return str(out / "manifest.parquet")


def _settings(manifest, out, **kw):
    kw = {"model": "pixlake-tiny", "batch_size": 16, "lr": 1e-3, **kw}
    return TrainSettings(manifest=manifest, out=str(out), **kw)


def test_loss_falls_and_checkpoint_loads_in_open_clip_and_the_platform(manifest, tmp_path):
    import open_clip

    from pixlake.platform.encoder import load_encoder

    report = train(_settings(manifest, tmp_path, epochs=40))
    import pyarrow.parquet as pq

    train_rows = [r for r in pq.read_table(manifest).to_pylist() if r["split"] == "train"]
    assert report["pairs"] == len(train_rows) < 80 and report["rejected"] == 0
    assert len(report["losses"]) == 40
    # chance level is ln(batch): every caption equally likely for every image
    assert report["losses"][-1] < 0.5 * math.log(16) < report["losses"][0], report["losses"]

    model, _, _ = open_clip.create_model_and_transforms("pixlake-tiny", pretrained=str(tmp_path / MODEL_FILE))
    trained = torch.load(tmp_path / MODEL_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v.float()) for k, v in trained.items())
    encoder = load_encoder("pixlake-tiny", str(tmp_path / MODEL_FILE), device="cpu")
    assert encoder.fingerprint == report["fingerprint"]
    assert encoder.fingerprint != load_encoder("pixlake-tiny", "none", device="cpu").fingerprint


def test_interrupted_run_resumes_to_the_same_weights(manifest, tmp_path):
    straight = train(_settings(manifest, tmp_path / "a", epochs=2))
    first = train(_settings(manifest, tmp_path / "b", epochs=2, max_steps=3, checkpoint_every=2))
    assert first["steps"] == 3 and (tmp_path / "b" / STATE_FILE).exists()
    resumed = train(_settings(manifest, tmp_path / "b", epochs=2))
    assert resumed["resumed_from"] == 3 and resumed["steps"] == straight["steps"] == straight["total_steps"]
    a = torch.load(tmp_path / "a" / MODEL_FILE, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / MODEL_FILE, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["fingerprint"] == straight["fingerprint"]


def test_resuming_with_other_settings_is_refused(manifest, tmp_path):
    train(_settings(manifest, tmp_path, epochs=1, max_steps=1))
    with pytest.raises(ConfigError, match="other settings"):
        train(_settings(manifest, tmp_path, epochs=1, lr=1e-4))


def test_bad_inputs_fail_clearly(manifest, tmp_path):
    with pytest.raises(SourceError, match="manifest not found"):
        train(_settings(str(tmp_path / "none.parquet"), tmp_path))
    with pytest.raises(ConfigError, match="larger than"):
        train(TrainSettings(manifest=manifest, out=str(tmp_path), model="pixlake-tiny", batch_size=1000))
    with pytest.raises(SourceError, match="usable rows"):
        train(_settings(manifest, tmp_path, split="no-such-split"))
