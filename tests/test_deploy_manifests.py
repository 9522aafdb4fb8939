"""deploy/ must hold manifests KubeRay, Helm and Docker accept and that run pixlake as it needs.

Every YAML file (and the YAML in deploy/README.md) is parsed, then the fields pixlake relies
on are checked, one concern per test: the Ray version and image everywhere, the job's
entrypoint against pixlake's own argument parser, the Serve config against Ray's
``ServeDeploySchema`` and pixlake's ``ServeSettings`` and in step with serve.yaml, GPU
requests, replica bounds, the master key only from a Secret and only on pods that run
governance, the key volume on those pods, Ray token authentication and a dashboard reachable
only inside the cluster, no usable default API key, the Milvus Service the store URI names.
Nothing here talks to a cluster: no CRD schema validation, Helm render or image build happens
(none is available).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import ray
import yaml

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
SECRET_NAME, SECRET_KEY = "pixlake-master-key", "PIXLAKE_MASTER_KEY"
KEY_DIR_ENV = "PIXLAKE_GOVERNANCE__KEY_DIR"
PLAN_ENV = "PIXLAKE_STORE__INDEX_PLAN"


# ----------------------------------------------------------------------------- loading


def load_one(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    return docs[0]


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load_one("rayjob-embed.yaml")


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return load_one("rayservice.yaml")


@pytest.fixture(scope="module")
def milvus() -> dict:
    return load_one("milvus-values.yaml")


@pytest.fixture(scope="module")
def readme() -> str:
    return (DEPLOY / "README.md").read_text()


@pytest.fixture(scope="module")
def serve_config(rayservice) -> dict:
    raw = rayservice["spec"]["serveConfigV2"]
    assert isinstance(raw, str), "serveConfigV2 must be a YAML string (a block scalar), not a mapping"
    return yaml.safe_load(raw)


@pytest.fixture(scope="module")
def serve_yaml() -> dict:
    return yaml.safe_load((ROOT / "serve.yaml").read_text())


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec inside a RayJob (rayClusterSpec) or a RayService (rayClusterConfig)."""
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def groups(doc: dict) -> list[tuple[str, dict]]:
    """(name, group) for the head ("head") and every worker group."""
    spec = cluster_spec(doc)
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def ray_container(group: dict) -> dict:
    """The Ray container: KubeRay treats the first container of the pod template as Ray's."""
    return group["template"]["spec"]["containers"][0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def gpus_requested(container: dict) -> int:
    """GPUs of the container: Kubernetes needs an extended resource in limits (requests, if
    given, must equal them), and KubeRay reads the GPU count from limits."""
    res = container.get("resources", {})
    limits, requests = res.get("limits", {}), res.get("requests", {})
    if "nvidia.com/gpu" in requests:
        assert requests["nvidia.com/gpu"] == limits.get("nvidia.com/gpu"), "nvidia.com/gpu requests without equal limits"
    return int(limits.get("nvidia.com/gpu", 0))


def mount_for(group: dict, path: str) -> tuple[dict, dict] | None:
    """The (volumeMount, volume) of the Ray container whose mount holds ``path``, or None."""
    spec = group["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in ray_container(group).get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            return m, volumes.get(m["name"], {})
    return None


def entrypoint_args(rayjob: dict) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def embed_flags(argv: list[str]):
    """Parse an embed command line (after ``python -m pixlake.jobs.embed``) with pixlake's parser."""
    from pixlake.jobs.embed import build_parser

    return parse_or_fail(build_parser(), argv)


def parse_or_fail(parser, argv: list[str]):
    try:
        return parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on unknown or malformed flags
        pytest.fail(f"pixlake's parser rejects {argv}: exit {e.code}")


def app_of(serve_config: dict) -> dict:
    (app,) = serve_config["applications"]
    return app


def key_volume_claim(doc: dict) -> str:
    """The PVC mounted at the key directory of the first pod that names one."""
    group = next(g for _, g in groups(doc) if KEY_DIR_ENV in env_of(ray_container(g)))
    found = mount_for(group, env_of(ray_container(group))[KEY_DIR_ENV]["value"])
    assert found is not None
    return found[1]["persistentVolumeClaim"]["claimName"]


def serve_groups(rayservice: dict) -> list[tuple[str, dict]]:
    """The RayService groups that can host a replica: those whose Ray has CPUs (the head has
    ``num-cpus: "0"``, and every pixlake deployment reserves some CPU)."""
    return [(n, g) for n, g in groups(rayservice) if str(g["rayStartParams"].get("num-cpus", "")) != "0"]


# ----------------------------------------------------------------------------- every file


def test_every_yaml_in_deploy_parses_into_mappings():
    files = sorted([*DEPLOY.glob("*.yaml"), *DEPLOY.glob("*.yml")])
    assert {f.name for f in files} >= {"rayjob-embed.yaml", "rayservice.yaml", "milvus-values.yaml"}
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f.name
        for d in docs:
            if "kind" in d:  # a Kubernetes object: KubeRay's v1 API, named
                assert d["apiVersion"] == "ray.io/v1" and d["kind"] in {"RayJob", "RayService"}, f.name
                assert d["metadata"]["name"], f.name


def test_rayjob_is_a_kuberay_v1_rayjob_that_cleans_up(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True  # GPU pods must not outlive the job
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec  # its own cluster


def test_rayservice_is_a_kuberay_v1_rayservice(rayservice):
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    assert {"serveConfigV2", "rayClusterConfig"} <= set(rayservice["spec"])


# ----------------------------------------------------------------------------- Ray version and image


def test_ray_version_of_both_clusters_is_the_installed_ray(rayjob, rayservice):
    lock = dict(line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().split() if "==" in line)
    assert lock["ray"] == ray.__version__
    for doc in (rayjob, rayservice):
        assert cluster_spec(doc)["rayVersion"] == ray.__version__, doc["kind"]


def test_every_pod_of_both_clusters_runs_one_image_tagged_with_pixlakes_version(rayjob, rayservice):
    images = {ray_container(g)["image"] for doc in (rayjob, rayservice) for _, g in groups(doc)}
    assert len(images) == 1, images
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    (image,) = images
    assert image.rsplit(":", 1)[1] == version


def test_dockerfile_base_image_is_the_pinned_ray(rayjob):
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) == 1
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py3\d+-gpu", froms[0])
    assert match, froms[0]
    assert match["ray"] == ray.__version__ == cluster_spec(rayjob)["rayVersion"]


def test_dockerfile_installs_the_lock_then_pixlake_without_deps():
    text = (DEPLOY / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN\s+((?:.*\\\n)*.*)$", text, re.MULTILINE))
    lock_at, self_at = runs.find("pip install --no-cache-dir -r requirements.lock"), runs.find("--no-deps .")
    assert lock_at >= 0 and self_at > lock_at, runs


def test_dockerfile_never_copies_the_repo_root_or_a_key_store():
    text = (DEPLOY / "Dockerfile").read_text()
    sources = [src for line in re.findall(r"^(?:COPY|ADD)\s+(.*)$", text, re.MULTILINE)
               for src in [w for w in line.split() if not w.startswith("--")][:-1]]
    assert {"requirements.lock", "pyproject.toml", "README.md", "pixlake"} <= set(sources)
    assert not {".", "./", "*"} & set(sources)  # no .dockerignore: the root holds pixlake.governance/
    assert not any("governance" in s or s.endswith((".key", ".db")) for s in sources)


# ----------------------------------------------------------------------------- the embed job


def test_rayjob_entrypoint_runs_the_embed_job_with_flags_pixlake_accepts(rayjob):
    argv = entrypoint_args(rayjob)
    assert argv[:3] == ["python", "-m", "pixlake.jobs.embed"], argv[:3]
    args = embed_flags(argv[3:])
    assert args.source.startswith(("s3://", "gs://")) and args.db and args.collection
    assert ";" not in rayjob["spec"]["entrypoint"]  # KubeRay pastes it into `... -- <entrypoint> ; fi`


def test_embed_job_starts_with_a_gpu_and_can_grow_to_its_concurrency(rayjob):
    # pixlake counts the cluster's GPUs when the job starts: none means CPU encoders.
    (gpu,) = [g for _, g in groups(rayjob) if gpus_requested(ray_container(g))]
    assert gpu["minReplicas"] >= 1 and gpu["replicas"] >= 1
    concurrency = embed_flags(entrypoint_args(rayjob)[3:]).concurrency
    per_pod = int(gpu["rayStartParams"]["num-gpus"])
    assert concurrency is not None and gpu["minReplicas"] * per_pod <= concurrency <= gpu["maxReplicas"] * per_pod


def test_embed_job_has_a_decode_group_that_scales_from_zero(rayjob):
    cpu = [g for name, g in groups(rayjob) if name != "head" and not gpus_requested(ray_container(g))]
    assert cpu and all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in cpu)
    assert cluster_spec(rayjob)["enableInTreeAutoscaling"] is True


def test_rayjob_head_runs_the_driver_with_cpu_and_memory_and_no_gpu(rayjob):
    head = ray_container(groups(rayjob)[0][1])
    assert gpus_requested(head) == 0
    requests = head["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory")


# ----------------------------------------------------------------------------- GPU groups and bounds


@pytest.mark.parametrize("name", ["rayjob-embed.yaml", "rayservice.yaml"])
def test_gpu_groups_request_nvidia_gpus_and_tell_ray_the_same_count(name):
    doc = load_one(name)
    gpu_groups = 0
    for group_name, g in groups(doc):
        wanted = gpus_requested(ray_container(g))
        declared = int(g.get("rayStartParams", {}).get("num-gpus", 0))
        assert wanted == declared, f"{group_name}: nvidia.com/gpu {wanted} vs num-gpus {declared}"
        gpu_groups += wanted > 0
        if group_name == "head":
            assert wanted == 0
    assert gpu_groups >= 1


@pytest.mark.parametrize("name", ["rayjob-embed.yaml", "rayservice.yaml"])
def test_worker_group_replica_bounds_are_sane(name):
    workers = [g for n, g in groups(load_one(name)) if n != "head"]
    assert len({g["groupName"] for g in workers}) == len(workers)
    for g in workers:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
        assert "rayStartParams" in g  # required by older KubeRay v1 CRDs
    assert "rayStartParams" in cluster_spec(load_one(name))["headGroupSpec"]


def test_rayservice_gpu_group_fits_the_query_encoders_autoscaling(rayservice, serve_config):
    encoder = next(d for d in app_of(serve_config)["deployments"] if d["name"] == "QueryEncoder")
    per_replica = encoder["ray_actor_options"]["num_gpus"]
    gpus = [g for _, g in groups(rayservice) if gpus_requested(ray_container(g))]
    most = sum(g["maxReplicas"] * int(g["rayStartParams"]["num-gpus"]) for g in gpus)
    least = sum(g["minReplicas"] * int(g["rayStartParams"]["num-gpus"]) for g in gpus)
    auto = encoder["autoscaling_config"]
    assert per_replica >= 1
    assert least >= auto["min_replicas"] * per_replica  # the first encoder never waits for a node
    assert most >= auto["max_replicas"] * per_replica
    assert cluster_spec(rayservice)["enableInTreeAutoscaling"] is True


# ----------------------------------------------------------------------------- master key and key volume


def all_containers() -> list[tuple[str, dict]]:
    out = []
    for name in ("rayjob-embed.yaml", "rayservice.yaml"):
        doc = load_one(name)
        for group_name, g in groups(doc):
            out += [(f"{name}:{group_name}", c) for c in g["template"]["spec"]["containers"]]
    return out


def test_master_key_comes_only_from_the_secret_never_a_literal():
    seen = 0
    for where, container in all_containers():
        for e in container.get("env", []):
            if "MASTER_KEY" in e["name"]:
                assert e["name"] == SECRET_KEY, f"{where}: {e['name']}"  # no key file path either
                assert "value" not in e, f"{where}: literal master key"
                assert e["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": SECRET_KEY}, where
                seen += 1
    assert seen >= 2  # at least the job's head and the Serve pods


def test_readme_creates_the_secret_the_manifests_read(readme):
    match = re.search(r"kubectl create secret generic (\S+).*?--from-literal=(\w+)=\$\(head -c32 /dev/urandom \| base64\)",
                      readme, re.DOTALL)
    assert match and (match[1], match[2]) == (SECRET_NAME, SECRET_KEY)


def governance_ready(group: dict, writable: bool) -> str | None:
    """Why ``group`` cannot run pixlake's governance, or None when it can."""
    container = ray_container(group)
    env = env_of(container)
    if SECRET_KEY not in env:
        return "no PIXLAKE_MASTER_KEY"
    key_dir = env.get(KEY_DIR_ENV, {}).get("value")
    if not key_dir:
        return f"no {KEY_DIR_ENV}"
    found = mount_for(group, key_dir)
    if found is None or found[0]["mountPath"].rstrip("/") != key_dir.rstrip("/"):
        return f"nothing mounted at {key_dir}"
    mount, volume = found
    if "persistentVolumeClaim" not in volume:
        return f"{key_dir} is not a PersistentVolumeClaim"
    if writable and (mount.get("readOnly") or volume["persistentVolumeClaim"].get("readOnly")):
        return f"{key_dir} is read-only"
    return None


def test_embed_job_head_runs_governance_with_key_dir_master_key_and_volume(rayjob):
    # The driver and its governance actor (pinned to the driver's node) run on the head.
    assert governance_ready(groups(rayjob)[0][1], writable=True) is None


def test_every_serve_pod_that_can_host_a_searcher_runs_governance(rayservice):
    # Serve may place a Searcher (which opens the key store and records erasures) on any pod with CPUs.
    assert len(serve_groups(rayservice)) == len(groups(rayservice)) - 1
    for name, g in serve_groups(rayservice):
        assert governance_ready(g, writable=True) is None, name


def test_serve_head_holds_no_master_key_and_hosts_no_searcher(rayservice, serve_config):
    # The head runs the GCS, dashboard and job API: the master key stays off it, which holds
    # only because no replica can be placed there.
    from ray.serve._private.build_app import build_app as ray_build  # what Serve does with build_app's result

    from pixlake.serve.app import build_app

    head = groups(rayservice)[0][1]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert SECRET_KEY not in env_of(ray_container(head)) and "volumes" not in head["template"]["spec"]
    overrides = {d["name"]: d.get("ray_actor_options", {}) for d in app_of(serve_config)["deployments"]}
    built = ray_build(build_app({**app_of(serve_config)["args"], "keys": []}), name="pixlake")
    assert {d.name for d in built.deployments} == set(overrides)
    for d in built.deployments:
        assert {**d.ray_actor_options, **overrides[d.name]}.get("num_cpus", 1) > 0, d.name


def test_serve_governance_key_dir_is_the_mounted_volume(rayservice, serve_config):
    key_dir = app_of(serve_config)["args"]["governance"]["key_dir"]
    for name, g in serve_groups(rayservice):
        assert env_of(ray_container(g))[KEY_DIR_ENV]["value"] == key_dir, name


def test_master_key_is_never_in_a_runtime_env(rayjob, serve_config, serve_yaml):
    # Ray's job API and Serve's REST API return runtime_env env_vars to any token holder.
    texts = [yaml.safe_dump(c) for c in (serve_config, serve_yaml)]
    texts += [rayjob["spec"]["entrypoint"], yaml.safe_dump(rayjob["spec"].get("runtimeEnvYAML", ""))]
    assert not any("MASTER_KEY" in t for t in texts)


def test_embed_job_workers_read_the_index_plan_but_hold_no_master_key(rayjob):
    head = groups(rayjob)[0][1]
    plan = env_of(ray_container(head))[PLAN_ENV]["value"]
    key_dir = env_of(ray_container(head))[KEY_DIR_ENV]["value"]
    assert plan.startswith(key_dir.rstrip("/") + "/")
    for name, g in groups(rayjob)[1:]:
        # The store actor (not pinned to the driver on a server) may read the plan on any pod.
        found = mount_for(g, plan)
        assert found is not None, f"{name}: the index plan is not mounted"
        assert found[1]["persistentVolumeClaim"]["claimName"] == key_volume_claim(rayjob)
        assert found[0].get("readOnly") is True, f"{name}: workers never write the key store"
        assert SECRET_KEY not in env_of(ray_container(g)), f"{name}: workers get keys from the governance actor"


def test_job_and_service_share_one_key_volume_which_the_readme_creates_rwx(rayjob, rayservice, readme):
    claim = key_volume_claim(rayjob)
    assert key_volume_claim(rayservice) == claim
    heredocs = re.findall(r"<<'EOF'\n(.*?)\nEOF", readme, re.DOTALL)
    pvcs = [d for text in heredocs for d in yaml.safe_load_all(text) if d and d.get("kind") == "PersistentVolumeClaim"]
    (pvc,) = pvcs
    assert pvc["metadata"]["name"] == claim
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


# ----------------------------------------------------------------------------- Serve config


def test_serve_config_validates_against_rays_schema_and_pixlakes_settings(serve_config):
    from ray.serve.schema import ServeDeploySchema

    from pixlake.serve.auth import hash_key
    from pixlake.serve.config import ServeSettings

    schema = ServeDeploySchema.model_validate(serve_config)
    (app,) = schema.applications
    assert app.import_path == "pixlake.serve.app:build_app"
    # As an operator fills it in: the placeholder's hash replaced by a real key's.
    keys = [{**k, "key_hash": hash_key(f"real-key-{i}")} for i, k in enumerate(app.args["keys"])]
    settings = ServeSettings(**{**app.args, "keys": keys})
    assert settings.keys and all(len(k.key_hash) == 64 for k in settings.keys)
    assert settings.governance.key_dir is not None  # required on a Milvus server


@pytest.mark.parametrize("which", ["serve.yaml", "rayservice.yaml"])
def test_shipped_serve_configs_hold_no_usable_api_key(which, serve_config, serve_yaml):
    # Before: both shipped sha256("change-me"), and a server deployed as shipped took
    # `Authorization: Bearer change-me` from anyone who had read the docs.
    from pydantic import ValidationError

    from pixlake.serve.config import ServeSettings

    args = app_of(serve_yaml if which == "serve.yaml" else serve_config)["args"]
    with pytest.raises(ValidationError, match="published placeholder 'change-me'"):
        ServeSettings(**args)


# ----------------------------------------------------------------------------- Ray access


@pytest.mark.parametrize("name", ["rayjob-embed.yaml", "rayservice.yaml"])
def test_ray_token_authentication_is_on(name):
    doc = load_one(name)
    assert cluster_spec(doc)["authOptions"] == {"mode": "token"}
    for where, container in all_containers():
        assert env_of(container).get("RAY_AUTH_MODE", {}).get("value", "token") == "token", where


@pytest.mark.parametrize("name", ["rayjob-embed.yaml", "rayservice.yaml"])
def test_dashboard_and_job_api_are_reachable_only_inside_the_cluster(name):
    doc = load_one(name)
    head = cluster_spec(doc)["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and not head.get("enableIngress")
    assert doc["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for group_name, g in groups(doc):
        pod = g["template"]["spec"]
        assert not pod.get("hostNetwork"), group_name
        assert not any("hostPort" in p for c in pod["containers"] for p in c.get("ports", [])), group_name


def test_serve_config_deployments_match_serve_yaml(serve_config, serve_yaml):
    ours = {d["name"]: d for d in app_of(serve_config)["deployments"]}
    theirs = {d["name"]: d for d in app_of(serve_yaml)["deployments"]}
    assert set(ours) == set(theirs) == {"Ingress", "QueryEncoder", "Searcher"}  # the names build_app deploys
    for name, d in theirs.items():
        assert ours[name]["max_ongoing_requests"] == d["max_ongoing_requests"], name
        for field in ("autoscaling_config", "num_replicas", "ray_actor_options"):
            assert ours[name].get(field) == d.get(field), f"{name}.{field}"


def test_serve_config_args_match_serve_yaml_except_the_store_uri(serve_config, serve_yaml):
    ours, theirs = dict(app_of(serve_config)["args"]), dict(app_of(serve_yaml)["args"])
    ours.pop("db"), theirs.pop("db")
    assert ours == theirs
    for field in ("import_path", "route_prefix", "name"):
        assert app_of(serve_config)[field] == app_of(serve_yaml)[field]


def test_serve_listens_on_the_port_kuberays_serve_service_targets(serve_config, rayservice):
    assert serve_config["http_options"]["port"] == 8000
    ports = {p["name"]: p["containerPort"] for p in ray_container(groups(rayservice)[0][1]).get("ports", [])}
    assert ports.get("serve") == 8000


def test_job_and_service_use_the_same_store_collection_and_encoder(rayjob, serve_config):
    job = embed_flags(entrypoint_args(rayjob)[3:])
    args = app_of(serve_config)["args"]
    # The query encoder must match the collection's fingerprint, or the Searcher refuses to start.
    assert (job.db, job.collection, job.model, job.pretrained) == (
        args["db"], args["collection"], args["model"], args["pretrained"])


# ----------------------------------------------------------------------------- Milvus


def test_milvus_values_run_a_cluster_behind_a_clusterip_service(milvus):
    assert milvus["cluster"]["enabled"] is True
    assert milvus["service"]["type"] == "ClusterIP"  # pixlake sends no credentials: never expose it


def test_milvus_values_enable_exactly_one_cluster_message_queue(milvus):
    queues = [q for q in ("pulsarv3", "pulsar", "kafka", "woodpecker") if milvus.get(q, {}).get("enabled")]
    assert len(queues) == 1, queues  # cluster mode has no rocksmq


def test_milvus_values_size_query_nodes_and_map_raw_vectors_from_disk(milvus):
    qn = milvus["queryNode"]
    assert qn["replicas"] >= 1 and qn["resources"]["requests"]["memory"]
    # The re-rank reads candidates' stored vectors back: with IVF_PQ that is raw field data
    # the query nodes hold, mapped from local disk here instead of RAM.
    user = yaml.safe_load(milvus["extraConfigFiles"]["user.yaml"])
    assert user["queryNode"]["mmap"]["vectorField"] is True
    assert qn["disk"]["enabled"] is True and qn["resources"]["requests"]["ephemeral-storage"]
    assert milvus["etcd"]["replicaCount"] >= 3 and milvus["minio"]["mode"] == "distributed"


def test_store_uri_names_the_milvus_service_the_readme_installs(rayjob, milvus, readme):
    install = re.search(r"helm install (\S+) milvus/milvus\b(.*?)-f deploy/milvus-values\.yaml", readme, re.DOTALL)
    assert install, "the README installs Milvus with deploy/milvus-values.yaml"
    namespace = re.search(r"-n (\S+)", install[2])[1]
    uri = urlparse(embed_flags(entrypoint_args(rayjob)[3:]).db)
    assert uri.scheme == "http"
    assert uri.hostname == f"{milvus['fullnameOverride']}.{namespace}.svc"
    assert uri.port == milvus["service"]["port"]


# ----------------------------------------------------------------------------- the README's planning step


def test_readme_planning_job_runs_valid_pixlake_commands_and_writes_the_jobs_plan(rayjob, readme):
    from pixlake.jobs.plan_index import build_parser as plan_parser

    match = re.search(r'^export PLAN_ENTRYPOINT="(.*)"$', readme, re.MULTILINE)
    assert match
    argv = shlex.split(match[1])
    assert argv[:3] == ["env", "-u", PLAN_ENV] and argv[3:5] == ["sh", "-c"] and len(argv) == 6
    assert ";" not in match[1]
    embed_cmd, plan_cmd = (shlex.split(part) for part in argv[5].split("&&"))
    assert embed_cmd[:3] == ["python", "-m", "pixlake.jobs.embed"]
    assert plan_cmd[:3] == ["python", "-m", "pixlake.jobs.plan_index"]
    sample = embed_flags(embed_cmd[3:])
    plan = parse_or_fail(plan_parser(), plan_cmd[3:])
    job = embed_flags(entrypoint_args(rayjob)[3:])
    assert (plan.db, plan.collection) == (sample.db, sample.collection) != (job.db, job.collection)
    assert (sample.model, sample.pretrained) == (plan.model, plan.pretrained) == (job.model, job.pretrained)
    head_env = env_of(ray_container(groups(rayjob)[0][1]))
    assert str(plan.out) == head_env[PLAN_ENV]["value"]
