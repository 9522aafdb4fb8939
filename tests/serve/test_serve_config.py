"""serve.yaml is a valid Ray Serve config whose app args are valid pixlake settings."""

from pathlib import Path

import yaml

CONFIG = Path(__file__).parents[2] / "serve.yaml"


def test_serve_yaml_validates_against_rays_schema_and_ours():
    from ray.serve.schema import ServeDeploySchema

    from pixlake.serve.config import ServeSettings

    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.parse_obj(raw)
    (app,) = schema.applications
    assert app.import_path == "pixlake.serve.app:build_app"
    # the shipped key is the published placeholder, refused as it stands; with a real key's
    # hash in its place, every other setting is valid
    real = [{**k, "key_hash": "0" * 64} for k in app.args["keys"]]
    settings = ServeSettings(**{**app.args, "keys": real})
    assert settings.keys and all(len(k.key_hash) == 64 for k in settings.keys)
    names = {d.name for d in app.deployments}
    assert names == {"Ingress", "QueryEncoder", "Searcher"}  # the names build_app deploys
    encoder = next(d for d in app.deployments if d.name == "QueryEncoder")
    assert encoder.ray_actor_options.num_gpus == 1


def test_serve_searches_with_session_consistency_unless_told_otherwise():
    import pytest
    from pydantic import ValidationError

    from pixlake.serve.config import ServeSettings

    assert ServeSettings().platform_settings().store.search_consistency == "session"  # a replica sees its uploads
    assert ServeSettings(search_consistency="strong").platform_settings().store.search_consistency == "strong"
    with pytest.raises(ValidationError):
        ServeSettings(search_consistency="eventually")
