"""Offline checks of the deployment configs and the KubeRay manifests for AKS.

No Ray instance and no Kubernetes cluster: every RayService/RayCluster/RayJob
under k8s/ (and every overlay as kustomize renders it, where kubectl is on the
PATH) is validated against the KubeRay CRD schemas in shared/kuberay-crds,
made strict so that a misspelt field fails; the Serve configs against Ray
Serve's own schema; the settings profiles against lancedb_ray.settings.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lancedb_ray.settings import CredentialMode, EventBusBackend, Settings, key_digest

REPO = Path(__file__).resolve().parents[1]
CRD_DIRS = [REPO.parent / "shared" / "kuberay-crds", REPO / "shared" / "kuberay-crds"]
DEPLOYMENTS = REPO / "deployments"
K8S = REPO / "k8s"
PROFILES = ("managed", "byoc", "hybrid")
BUILDER = "lancedb_ray.api.app:build_app"
RAY_KINDS = {"RayService": "rayservices", "RayCluster": "rayclusters", "RayJob": "rayjobs"}
RAY_TOKEN_SECRET = "lancedb-ray-ray-token"  # Ray token auth: KubeRay reads its data key auth_token
SECRET_FIELDS = ("account_key", "sas_token", "connection_string", "sasl_password", "api_keys")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------
# Loading


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)


def _load_all(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]


def _crd_dir() -> Path:
    for path in CRD_DIRS:
        if path.is_dir():
            return path
    pytest.skip(f"KubeRay CRDs not found (looked in {', '.join(map(str, CRD_DIRS))})")


def _strict(schema: Any, *, open_object: bool = False) -> Any:
    """A copy of an OpenAPI v3 schema in which unknown object keys are errors.

    Every object schema that says nothing about additionalProperties gets
    ``additionalProperties: false``, except those marked
    ``x-kubernetes-preserve-unknown-fields`` (Kubernetes keeps unknown keys
    there, so they stay open). Only schema positions are walked, so a property
    that happens to be named like a keyword is not mistaken for one.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(s) for s in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = _strict(out["not"])
    is_object = out.get("type") == "object" or "properties" in out
    preserved = out.get("x-kubernetes-preserve-unknown-fields") is True
    if is_object and "additionalProperties" not in out and not preserved and not open_object:
        out["additionalProperties"] = False
    return out


# The CRDs leave top-level metadata as a bare object (the API server validates
# ObjectMeta itself); check the fields manifests are allowed to set.
_OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


@functools.cache
def _crd_schema(kind: str) -> dict[str, Any]:
    crd = _load(_crd_dir() / f"ray.io_{RAY_KINDS[kind]}.yaml")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return copy.deepcopy(version["schema"]["openAPIV3Schema"])


@functools.cache
def _validator(kind: str, strict: bool = True) -> jsonschema.Draft4Validator:
    schema = _crd_schema(kind)
    schema["properties"]["metadata"] = _OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    if strict:
        schema = _strict(schema)
    return jsonschema.Draft4Validator(schema)


def _errors(doc: dict[str, Any], strict: bool = True) -> list[str]:
    errors = _validator(doc["kind"], strict).iter_errors(doc)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def _is_ray_doc(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("apiVersion") == "ray.io/v1"
        and doc.get("kind") in RAY_KINDS
    )


def _repo_ray_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        for i, doc in enumerate(_load_all(path.read_text())):
            if _is_ray_doc(doc):
                docs.append((f"{path.relative_to(REPO)}#{i}", doc))
    return docs


REPO_RAY_DOCS = _repo_ray_docs()


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl (with its built-in kustomize) is not on the PATH; overlays not rendered"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(_load_all(result.stdout))


def _only(docs: Any, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    return doc


def _base_rayservice() -> dict[str, Any]:
    return _only(_load_all((K8S / "base" / "rayservice.yaml").read_text()), "RayService")


def _jobs() -> list[dict[str, Any]]:
    return [d for _, d in REPO_RAY_DOCS if d["kind"] == "RayJob"]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return spec.get("rayClusterConfig") or spec.get("rayClusterSpec") or spec


def _groups(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = _cluster_spec(doc)
    yield "head", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _ray_containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, group in _groups(doc):
        yield name, group["template"]["spec"]["containers"][0]


def _all_ray_resources() -> list[tuple[str, dict[str, Any]]]:
    return [("base RayService", _base_rayservice())] + [(d["metadata"]["name"], d) for d in _jobs()]


# ---------------------------------------------------------------------------
# KubeRay CRDs, strictly


def test_manifests_exist() -> None:
    kinds = sorted(d["kind"] for _, d in REPO_RAY_DOCS)
    assert kinds == ["RayJob", "RayJob", "RayService"], kinds


@pytest.mark.parametrize("name,doc", REPO_RAY_DOCS, ids=[n for n, _ in REPO_RAY_DOCS])
def test_ray_document_matches_crd(name: str, doc: dict[str, Any]) -> None:
    assert _errors(doc) == []


@pytest.mark.parametrize("overlay", PROFILES)
def test_rendered_overlay_matches_crd(overlay: str) -> None:
    docs = _rendered(overlay)
    ray_docs = [d for d in docs if _is_ray_doc(d)]
    assert [d["kind"] for d in ray_docs] == ["RayService"]
    for doc in ray_docs:
        assert _errors(doc) == []
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "lancedb-ray", doc["metadata"]


def _misspell(doc: dict[str, Any], path: list[Any], new_key: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[new_key] = parent.pop(path[-1])
    return doc


@pytest.mark.parametrize(
    "path,misspelt",
    [
        (["spec", "rayClusterConfig", "workerGroupSpecs", 1, "replicas"], "replica"),
        (["spec", "rayClusterConfig", "enableInTreeAutoscaling"], "enableIntreeAutoscaling"),
        (
            ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "serviceAccountName"],
            "serviceAccountname",
        ),
        (
            [
                "spec",
                "rayClusterConfig",
                "workerGroupSpecs",
                1,
                "template",
                "spec",
                "tolerations",
                0,
                "effect",
            ],
            "efect",
        ),
        (["metadata", "labels"], "label"),
    ],
)
def test_strict_schema_catches_misspelt_field(path: list[Any], misspelt: str) -> None:
    good = _base_rayservice()
    bad = _misspell(good, path, misspelt)
    assert _errors(good) == []
    errors = _errors(bad)
    assert errors and any(misspelt in e for e in errors), errors
    # The CRD as shipped would let it through (the API server prunes the key
    # silently): the strictness is what catches it.
    if path[0] != "metadata":
        assert _errors(bad, strict=False) == []


def test_strictness_leaves_preserve_unknown_fields_open() -> None:
    schema = _strict(
        {
            "type": "object",
            "properties": {
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    )
    validator = jsonschema.Draft4Validator(schema)
    assert validator.is_valid({"open": {"anything": {"at": "all"}}, "map": {"k": "v"}})
    assert not validator.is_valid({"closed": {"b": "x"}})
    assert not validator.is_valid({"typo": 1})


# ---------------------------------------------------------------------------
# Serve configs


def _serve_configs() -> list[tuple[str, dict[str, Any]]]:
    configs = [(p.name, _load(p)) for p in sorted(DEPLOYMENTS.glob("*.yaml"))]
    configs.append(
        ("k8s/base RayService", yaml.safe_load(_base_rayservice()["spec"]["serveConfigV2"]))
    )
    return configs


SERVE_CONFIGS = _serve_configs()


def _unknown_keys(data: Any, model: Any, where: str) -> list[str]:
    """Keys Serve's schema would silently ignore (its models allow extra keys)."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    return [f"{where}.{k}" for k in data if k not in names]


def test_serve_unknown_key_check_catches_misspelling() -> None:
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    misspelt = {"name": "QueryNode", "num_replica": 2, "max_ongoing_requests": 8}
    config = {"applications": [{"import_path": BUILDER, "deployments": [misspelt]}]}
    ServeDeploySchema.model_validate(config)  # Serve itself ignores the key...
    assert _unknown_keys(misspelt, DeploymentSchema, "QueryNode") == ["QueryNode.num_replica"]


def test_serve_configs_found() -> None:
    assert {n for n, _ in SERVE_CONFIGS} >= {"local.yaml", "production.yaml", "k8s/base RayService"}


@pytest.mark.parametrize("name,config", SERVE_CONFIGS, ids=[n for n, _ in SERVE_CONFIGS])
def test_serve_config_matches_serve_schema(name: str, config: dict[str, Any]) -> None:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    ServeDeploySchema.model_validate(config)
    unknown = _unknown_keys(config, ServeDeploySchema, "")
    unknown += _unknown_keys(config.get("http_options"), HTTPOptionsSchema, "http_options")
    (app,) = config["applications"]
    unknown += _unknown_keys(app, ServeApplicationSchema, "app")
    for dep in app.get("deployments", []):
        unknown += _unknown_keys(dep, DeploymentSchema, dep.get("name", "?"))
        auto = dep.get("autoscaling_config")
        unknown += _unknown_keys(auto, AutoscalingConfig, "autoscaling_config")
    assert unknown == []

    assert app["name"] == "lancedb"
    assert app["route_prefix"] == "/"
    assert app["import_path"] == BUILDER
    assert set(app.get("args", {})) <= {"config_file", "settings"}
    assert [d["name"] for d in app["deployments"]] == ["QueryNode"]
    Settings.model_validate(app["args"].get("settings", {}))


def test_local_config_defaults() -> None:
    config = _load(DEPLOYMENTS / "local.yaml")
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    (app,) = config["applications"]
    assert "config_file" not in app["args"]
    settings = Settings.model_validate(app["args"]["settings"])
    assert settings.storage.root.uri == "./data"
    assert settings.events.backend is EventBusBackend.EMBEDDED
    assert app["runtime_env"]["env_vars"]["RAY_AUTH_MODE"] == "disabled"


def test_production_config() -> None:
    (app,) = _load(DEPLOYMENTS / "production.yaml")["applications"]
    (node,) = app["deployments"]
    assert node["autoscaling_config"]["min_replicas"] >= 2
    assert "num_replicas" not in node
    settings = Settings.model_validate(app["args"]["settings"])
    assert settings.executors.replicas == 2
    assert settings.storage.root.credential is CredentialMode.WORKLOAD_IDENTITY
    assert settings.events.backend is EventBusBackend.KAFKA
    assert settings.events.kafka.security_protocol == "SASL_SSL"
    assert settings.events.kafka.sasl_username == "$ConnectionString"
    assert settings.events.kafka.create_topic is False
    assert app["args"]["config_file"] == "/etc/lancedb-ray/settings.yaml"


@pytest.mark.parametrize("name", ["local.yaml", "production.yaml"])
def test_deployment_options_agree_with_server_settings(name: str) -> None:
    """The config's QueryNode options override the builder's; both say the same."""
    (app,) = _load(DEPLOYMENTS / name)["applications"]
    (node,) = app["deployments"]
    server = Settings.model_validate(app["args"]["settings"]).server
    assert node["max_ongoing_requests"] == server.max_ongoing_requests
    assert node["max_queued_requests"] == server.max_queued_requests
    if "autoscaling_config" in node:
        assert server.num_replicas == "auto"
        assert node["autoscaling_config"]["max_replicas"] == server.max_replicas
        assert node["ray_actor_options"]["num_cpus"] == server.num_cpus
    else:
        assert node["num_replicas"] == server.num_replicas


def test_rayservice_runs_the_production_config() -> None:
    embedded = yaml.safe_load(_base_rayservice()["spec"]["serveConfigV2"])
    assert embedded == _load(DEPLOYMENTS / "production.yaml")


# ---------------------------------------------------------------------------
# Settings profiles


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("LANCEDB_RAY_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _leaves(data: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(data, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, (*prefix, key)))
        return out
    return {prefix: data}


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_parses(profile: str, clean_env: pytest.MonkeyPatch) -> None:
    path = DEPLOYMENTS / "profiles" / f"{profile}.yaml"
    raw = _load(path)
    assert set(raw) <= {"server", "storage", "executors", "events", "agent", "ray"}
    settings = Settings.model_validate(raw)
    assert Settings.load(path).to_plain() == settings.with_absolute_paths().to_plain()
    assert settings.events.backend is EventBusBackend.KAFKA
    assert settings.events.kafka.bootstrap_servers.endswith(".servicebus.windows.net:9093")
    root = settings.storage.root
    assert root.account and root.container and root.credential is CredentialMode.WORKLOAD_IDENTITY
    for location in settings.storage.databases.values():
        assert location.account and location.container
    # No secret is written in a profile: they come from the environment.
    leaves = _leaves(raw)
    assert not [k for k in leaves if k[-1] in SECRET_FIELDS]


@pytest.mark.parametrize("profile", PROFILES)
def test_production_overrides_agree_with_profile(
    profile: str, clean_env: pytest.MonkeyPatch
) -> None:
    (app,) = _load(DEPLOYMENTS / "production.yaml")["applications"]
    overrides = app["args"]["settings"]
    raw = _load(DEPLOYMENTS / "profiles" / f"{profile}.yaml")
    profile_leaves = _leaves(raw)
    clashes = {
        k: (v, profile_leaves[k])
        for k, v in _leaves(overrides).items()
        if k in profile_leaves and profile_leaves[k] != v
    }
    assert clashes == {}
    merged = Settings.load(DEPLOYMENTS / "profiles" / f"{profile}.yaml", **overrides)
    assert merged.executors.replicas == 2


def test_hybrid_customer_containers_take_sas_from_env(clean_env: pytest.MonkeyPatch) -> None:
    path = DEPLOYMENTS / "profiles" / "hybrid.yaml"
    sas = {
        name: location
        for name, location in Settings.load(path).storage.databases.items()
        if location.credential is CredentialMode.SAS_TOKEN
    }
    assert sas, "the hybrid profile has no customer container"
    assert all(loc.sas_token is None for loc in sas.values())
    for name in sas:
        clean_env.setenv(f"LANCEDB_RAY_STORAGE__DATABASES__{name.upper()}__SAS_TOKEN", f"sv={name}")
    clean_env.setenv("LANCEDB_RAY_EVENTS__KAFKA__SASL_PASSWORD", "Endpoint=sb://x/")
    clean_env.setenv("LANCEDB_RAY_SERVER__API_KEYS", '["k1", "k2"]')
    settings = Settings.load(path)
    for name, location in sas.items():
        loaded = settings.storage.databases[name]
        assert loaded.sas_token is not None and loaded.sas_token.get_secret_value() == f"sv={name}"
        assert loaded.account == location.account
    assert settings.events.kafka.sasl_password is not None
    assert [k.sha256 for k in settings.server.api_keys] == [key_digest("k1"), key_digest("k2")]


@pytest.mark.parametrize("profile", PROFILES)
def test_overlay_settings_are_the_profile(profile: str) -> None:
    overlay = K8S / "overlays" / profile / "settings.yaml"
    assert overlay.read_text() == (DEPLOYMENTS / "profiles" / f"{profile}.yaml").read_text()


@pytest.mark.parametrize("overlay", PROFILES)
def test_rendered_overlay_wiring(overlay: str) -> None:
    docs = _rendered(overlay)
    config_map = _only(docs, "ConfigMap")
    assert config_map["metadata"]["name"] == "lancedb-ray-settings"
    profile = (DEPLOYMENTS / "profiles" / f"{overlay}.yaml").read_text()
    assert yaml.safe_load(config_map["data"]["settings.yaml"]) == yaml.safe_load(profile)
    account = _only(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    service = _only(docs, "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config == _load(DEPLOYMENTS / "production.yaml")
    annotations = service["spec"]["serveService"]["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"
    pls = annotations.get("service.beta.kubernetes.io/azure-pls-create")
    assert pls == ("false" if overlay == "byoc" else "true")
    if overlay == "hybrid":
        for _, container in _ray_containers(service):
            (ref,) = container["envFrom"]
            assert ref["secretRef"]["optional"] is False


# ---------------------------------------------------------------------------
# What the AKS deployment needs


def test_gpu_group_scales_to_zero_on_the_gpu_pool() -> None:
    candidates = [_base_rayservice(), *_jobs()]
    checked = 0
    for doc in candidates:
        assert _cluster_spec(doc)["enableInTreeAutoscaling"] is True
        for name, group in _groups(doc):
            if name != "gpu":
                continue
            checked += 1
            assert group["minReplicas"] == 0
            assert group.get("replicas", 0) == 0
            pod = group["template"]["spec"]
            resources = pod["containers"][0]["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == "1"
            assert resources["limits"]["nvidia.com/gpu"] == "1"
            assert {
                "key": "sku",
                "operator": "Equal",
                "value": "gpu",
                "effect": "NoSchedule",
            } in pod["tolerations"]
            assert pod["nodeSelector"]["kubernetes.azure.com/agentpool"] == "raygpu"
    assert checked == 2  # the RayService and the bulk-index job


def test_cpu_group_holds_two_executor_replicas() -> None:
    (app,) = _load(DEPLOYMENTS / "production.yaml")["applications"]
    replicas = app["args"]["settings"]["executors"]["replicas"]
    groups = dict(_groups(_base_rayservice()))
    assert groups["cpu"]["minReplicas"] >= replicas
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize("name,doc", _all_ray_resources(), ids=[n for n, _ in _all_ray_resources()])
def test_pods_use_workload_identity(name: str, doc: dict[str, Any]) -> None:
    for group, spec in _groups(doc):
        template = spec["template"]
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true", group
        assert template["spec"]["serviceAccountName"] == "lancedb-ray", group
    account = _only(_load_all((K8S / "base" / "serviceaccount.yaml").read_text()), "ServiceAccount")
    assert account["metadata"]["name"] == "lancedb-ray"
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("name,doc", _all_ray_resources(), ids=[n for n, _ in _all_ray_resources()])
def test_containers_share_settings_secrets_and_auth_mode(name: str, doc: dict[str, Any]) -> None:
    assert _cluster_spec(doc)["authOptions"] == {"mode": "token", "secretName": RAY_TOKEN_SECRET}
    assert _env(_cluster_spec(doc)["autoscalerOptions"])["RAY_AUTH_MODE"]["value"] == "token"
    for group, container in _ray_containers(doc):
        env = _env(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token", group
        assert env["LANCEDB_RAY_CONFIG"]["value"] == "/etc/lancedb-ray/settings.yaml", group
        kafka = env["LANCEDB_RAY_EVENTS__KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert kafka == {"name": "lancedb-ray-eventhubs", "key": "connection-string"}, group
        refs = [r["secretRef"]["name"] for r in container["envFrom"]]
        assert refs == ["lancedb-ray-storage-credentials"], group
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/etc/lancedb-ray"] == "settings", group
        volumes = {v["name"]: v for v in _groups_volumes(doc, group)}
        assert volumes["settings"]["configMap"]["name"] == "lancedb-ray-settings", group
    if doc["kind"] == "RayJob":
        submitter = doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
        assert _env(submitter)["RAY_AUTH_MODE"]["value"] == "token"
        token = _env(submitter)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": RAY_TOKEN_SECRET, "key": "auth_token"}


@pytest.mark.parametrize("name,doc", _all_ray_resources(), ids=[n for n, _ in _all_ray_resources()])
def test_ray_pods_run_as_non_root_without_privileges(name: str, doc: dict[str, Any]) -> None:
    for group, spec in _groups(doc):
        pod = spec["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, group
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, group
    for group, container, _ in _every_container(doc):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, group
        assert context["capabilities"] == {"drop": ["ALL"]}, group
        assert context["runAsNonRoot"] is True, group


# Where Ray and the libraries it runs write, besides the volumes a pod is given for its data:
# Ray's session dir (/tmp/ray: logs, sockets, spilled objects, runtime envs), temp files, the
# caches under $HOME (pip, numba, triton), lancedb-ray's default state root and Ray's token file.
WRITTEN = ("/tmp", "/home/ray/.cache", "/home/ray/.local/state", "/home/ray/.ray")


def _every_container(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, its pod's spec) for every container of a Ray resource, sidecars included."""
    for group, spec in _groups(doc):
        pod = spec["template"]["spec"]
        for container in pod["containers"]:
            yield f"{group}/{container['name']}", container, pod
    head_pod = _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
    yield "autoscaler", _cluster_spec(doc)["autoscalerOptions"], head_pod
    if "submitterPodTemplate" in doc["spec"]:
        pod = doc["spec"]["submitterPodTemplate"]["spec"]
        for container in pod["containers"]:
            yield f"submitter/{container['name']}", container, pod


@pytest.mark.parametrize("name,doc", _all_ray_resources(), ids=[n for n, _ in _all_ray_resources()])
def test_ray_containers_have_a_read_only_root_filesystem(name: str, doc: dict[str, Any]) -> None:
    """Every path written is an emptyDir; everything else (the image) is read-only."""
    for where, container, pod in _every_container(doc):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        writable = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])
                    if not m.get("readOnly")}
        assert set(WRITTEN) <= set(writable), where
        assert all("emptyDir" in volume for volume in writable.values()), where
        assert all(volume["emptyDir"].get("sizeLimit") for volume in writable.values()), where


def _network_policies() -> dict[str, dict[str, Any]]:
    docs = _load_all((K8S / "base" / "networkpolicy.yaml").read_text())
    return {d["spec"]["podSelector"]["matchLabels"]["ray.io/node-type"]: d["spec"]
            for d in docs if d["kind"] == "NetworkPolicy"}


@pytest.mark.parametrize("node_type,open_ports", [("head", [8080]), ("worker", [8000, 8080])])
def test_ray_pods_answer_only_ray_pods_and_the_operator(node_type: str, open_ports: list[int]) -> None:
    """Ray's own ports: the cluster's Ray pods and the operator only; the rest: Serve and metrics."""
    spec = _network_policies()[node_type]
    assert spec["policyTypes"] == ["Ingress"]
    control, served = spec["ingress"]
    assert control["from"] == [
        {"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}},
    ]
    assert "ports" not in control and "from" not in served
    assert served["ports"] == [{"port": port, "protocol": "TCP"} for port in open_ports]
    for overlay in PROFILES:
        rendered = [d for d in _rendered(overlay) if isinstance(d, dict) and d.get("kind") == "NetworkPolicy"]
        assert len(rendered) == 2 and {d["metadata"]["namespace"] for d in rendered} == {"lancedb-ray"}


def test_private_link_is_never_open_to_every_subscription() -> None:
    annotations = _base_rayservice()["spec"]["serveService"]["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/azure-pls-visibility"] != "*"
    for overlay in PROFILES:
        service = _only(_rendered(overlay), "RayService")
        annotations = service["spec"]["serveService"]["metadata"]["annotations"]
        if annotations["service.beta.kubernetes.io/azure-pls-create"] != "true":
            continue  # byoc: no Private Link Service at all
        visibility = annotations["service.beta.kubernetes.io/azure-pls-visibility"]
        assert visibility != "*" and "*" not in visibility.split(), overlay


def _groups_volumes(doc: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return dict(_groups(doc))[group]["template"]["spec"].get("volumes", [])


def test_executor_spill_dir_is_on_local_disk() -> None:
    (app,) = _load(DEPLOYMENTS / "production.yaml")["applications"]
    spill_dir = app["args"]["settings"]["executors"]["spill_dir"]
    local_dirs = [spill_dir]
    for profile in PROFILES:
        raw = _load(DEPLOYMENTS / "profiles" / f"{profile}.yaml")
        local_dirs += [raw["events"]["outbox_directory"], raw["agent"]["jobs_directory"]]
    doc = _base_rayservice()
    for group, container in _ray_containers(doc):
        volumes = {v["name"]: v for v in _groups_volumes(doc, group)}
        for directory in local_dirs:
            (mount,) = [
                m for m in container["volumeMounts"] if directory.startswith(m["mountPath"] + "/")
            ]
            assert "emptyDir" in volumes[mount["name"]], (group, directory)


def test_serve_service_is_an_internal_lb_with_private_link() -> None:
    service = _base_rayservice()["spec"]["serveService"]
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"
    assert annotations["service.beta.kubernetes.io/azure-pls-create"] == "true"
    assert annotations["service.beta.kubernetes.io/azure-pls-name"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "serve", "port": 8000, "protocol": "TCP"}]
    for _, container in _ray_containers(_base_rayservice()):
        assert {"name": "serve", "containerPort": 8000} in container["ports"]


def test_metrics_port_and_pod_monitor() -> None:
    monitor = _only(_load_all((K8S / "base" / "podmonitor.yaml").read_text()), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name, doc in _all_ray_resources():
        for group, spec in _groups(doc):
            assert spec["rayStartParams"]["metrics-export-port"] == "8080", (name, group)
            labels = spec["template"]["metadata"]["labels"]
            # ray.io/is-ray-node is set by KubeRay on every Ray pod.
            assert all(
                labels.get(k) == v for k, v in selector.items() if not k.startswith("ray.io/")
            )
            container = spec["template"]["spec"]["containers"][0]
            assert {"name": endpoint["port"], "containerPort": 8080} in container["ports"]


def test_query_node_pods_probe_readiness_and_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness asks the service (/ready); liveness stays on the raylet, so an outage restarts nothing."""
    from fastapi.testclient import TestClient

    from lancedb_ray.api import context
    from lancedb_ray.api.http import create_app

    monkeypatch.setattr(context, "_services", None)  # another test may have installed some
    client = TestClient(create_app())  # no services installed: a node that is starting
    (app,) = _load(DEPLOYMENTS / "production.yaml")["applications"]
    serve_port = _load(DEPLOYMENTS / "production.yaml")["http_options"]["port"]
    container = dict(_groups(_base_rayservice()))["cpu"]["template"]["spec"]["containers"][0]
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/ready" and client.get(ready["path"]).status_code == 503
    assert {"name": ready["port"], "containerPort": serve_port} in container["ports"]
    assert container["readinessProbe"]["timeoutSeconds"] >= 3  # the check pings executors for 2 s
    live = container["livenessProbe"]
    assert "httpGet" not in live and "local_raylet_healthz" in " ".join(live["exec"]["command"])
    assert client.get("/health").status_code == 200  # the process serves: for the CLI and balancers
    (query_node,) = [d for d in app["deployments"] if d["name"] == "QueryNode"]
    assert query_node["health_check_period_s"] > 0 and query_node["health_check_timeout_s"] > 0


def test_base_kustomization_lists_its_files() -> None:
    kustomization = _load(K8S / "base" / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize(
    "job,module", [("lancedb-bulk-ingest", "ingest"), ("lancedb-bulk-index", "index")]
)
def test_jobs_run_the_job_entrypoints(job: str, module: str) -> None:
    (doc,) = [d for d in _jobs() if d["metadata"]["name"] == job]
    assert doc["spec"]["entrypoint"].startswith(f"python -m lancedb_ray.jobs.{module} ")
    assert doc["spec"]["shutdownAfterJobFinishes"] is True


# ---------------------------------------------------------------------------
# Grafana


def test_grafana_dashboard_reads_the_metrics_the_code_defines() -> None:
    """Each name a panel reads is defined in the code, with a suffix its kind exports.

    That every panel returns data is proven against a real Prometheus in test_dashboard.py.
    """
    from tests.support.metric_names import all_metrics, used_metrics

    defined = all_metrics()
    dashboard = json.loads((DEPLOYMENTS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {pair for expr in exprs for pair in used_metrics(expr)}
    for name, suffix in used:
        assert name in defined, f"{name} is read by the dashboard but no code defines it"
        assert (suffix == "_bucket") == (defined[name].kind == "Histogram"), (name, suffix)
    shown = {name for name, _ in used}
    # The request, execution and write metrics of the query node are all on it.
    assert {n for n in defined if n.split("_")[2] in ("api", "service", "executors")} <= shown, shown
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in exprs:
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr
