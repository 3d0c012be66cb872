"""deploy/: the manifests, the compose file and the Dockerfile, validated without a cluster.

Schema-aware tools from the package index, offline: kubernetes-validate (the Kubernetes
OpenAPI schemas, bundled) for the manifests, check-jsonschema with its bundled compose-spec
schema for compose.yaml (the ``docker compose`` plugin is not available on CI machines), and
dockerfile-parse for the Dockerfile. Then the cross-references no schema sees: selectors,
ports, probe paths, mounted files, the routes the configs ship.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.config import RoutesFile
from service.tenancy.access import PUBLIC, allowed_roles

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the oldest version still in upstream support we target
NON_ROOT_UID = 10001


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str = "provenant") -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    # strict: unknown fields (a typo in a probe or a securityContext key) fail too
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    kinds = {d["kind"] for d in manifests()}
    required = {"Deployment", "Service", "ConfigMap", "Job", "HorizontalPodAutoscaler"}
    assert required | {"PodDisruptionBudget"} <= kinds


def test_manifests_agree_with_each_other_and_with_the_gateway() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service")["spec"]["selector"].items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "provenant")

    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert one("Service")["spec"]["ports"][0]["targetPort"] in ports
    assert ports["http"] == 8080
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert allowed_roles("GET", path) == PUBLIC, f"{probe} {path} must need no key"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]

    # non-root, and the same uid as the image's USER
    for spec in (pod["spec"], one("Job", "provenant-migrate")["spec"]["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == NON_ROOT_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # every ConfigMap a pod mounts is shipped; Secrets are referenced, never shipped
    config_maps = {d["metadata"]["name"] for d in manifests() if d["kind"] == "ConfigMap"}
    volumes = pod["spec"]["volumes"]
    assert {v["configMap"]["name"] for v in volumes if "configMap" in v} <= config_maps
    assert not [d for d in manifests() if d["kind"] == "Secret"]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["PROVENANT_DATABASE_URL"]["valueFrom"]
    # the routes file the ConfigMap ships is one the gateway accepts
    routes = one("ConfigMap", "provenant-config")["data"]["provenant.yaml"]
    assert RoutesFile.model_validate(yaml.safe_load(routes)).routes


def test_compose_file_validates_against_the_compose_spec() -> None:
    tool = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_references_resolve() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "qdrant",
        "mlflow",
        "otel-collector",
        "jaeger",
        "migrate",
        "gateway",
    } <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for kind in ("configs", "secrets"):
            for ref in service.get(kind, []):
                source = ref["source"] if isinstance(ref, dict) else ref
                assert source in compose[kind], f"{name}: undeclared {kind} {source}"
        for volume in service.get("volumes", []):
            named = volume.split(":", 1)[0]
            assert named.startswith((".", "/")) or named in compose["volumes"]
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file()
    for kind in ("configs", "secrets"):
        for name, item in compose[kind].items():
            if kind == "configs":  # secrets are made on the host and never committed
                assert (DEPLOY / item["file"]).is_file(), f"{kind} {name}"
    gateway = services["gateway"]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["provenant", "migrate"]
    routes = yaml.safe_load((DEPLOY / compose["configs"]["routes"]["file"]).read_text())
    assert RoutesFile.model_validate(routes).routes
    collector = yaml.safe_load((DEPLOY / compose["configs"]["otel_collector"]["file"]).read_text())
    endpoint = gateway["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.endswith(":4318")  # OTLP over http/protobuf, what the gateway exports
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(collector.get(kind) or {})


_FETCHERS = re.compile(r"\b(pip|pip3|curl|wget|apt-get|apt|apk|git|npm|uv)\b")


def test_the_image_is_multi_stage_non_root_and_fetches_nothing_at_run_time() -> None:
    parser = DockerfileParser(str(DEPLOY / "Dockerfile"))
    instructions = parser.structure
    stages = [i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"]
    assert len(stages) >= 2, "multi-stage: the toolchain stays in the build stage"
    runtime = instructions[stages[-1] :]
    users = [ins["value"] for ins in runtime if ins["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] == str(NON_ROOT_UID)
    for ins in runtime:
        if ins["instruction"] == "RUN":
            assert not _FETCHERS.search(ins["value"]), f"runtime stage fetches: {ins['value']}"
        if ins["instruction"] == "ADD":
            pytest.fail("ADD can fetch URLs; the image uses COPY only")
    (cmd,) = [ins["value"] for ins in runtime if ins["instruction"] == "CMD"]
    assert yaml.safe_load(cmd) == ["provenant", "serve"]
    # what the image copies from the context exists and passes the context filter
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for ins in instructions:
        if ins["instruction"] == "COPY" and "--from" not in ins["value"]:
            *sources, _ = ins["value"].split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is not in the build context"


def test_the_policy_bundle_shipped_in_the_configmap_is_valid_and_is_the_default() -> None:
    from service.policies.bundle import Bundle, problems

    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "configmap.yaml").read_text()) if d]
    (policies,) = [d for d in docs if d["metadata"]["name"] == "provenant-policies"]
    text = policies["data"]["default.yaml"]
    assert problems(Path("configmap:default.yaml"), text) == []
    shipped = (ROOT / "policies" / "default.yaml").read_text()
    assert (
        Bundle.model_validate(yaml.safe_load(text)).sha256
        == Bundle.model_validate(yaml.safe_load(shipped)).sha256
    )
