"""deploy/: the Kubernetes manifests parse, and what they say matches the service and its image."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
import yaml

from imgserve import config
from imgserve.serving import bentoml_compat
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
SERVING_PORT = bentoml_compat.serving_port()  # what `bentoml serve` listens on in the image
README = (ROOT / "README.md").read_text()


def manifests() -> dict[str, dict]:
    """Every document in deploy/*.yaml, by kind (one of each)."""
    found: dict[str, dict] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} documents"
            found[doc["kind"]] = doc | {"_file": path.name}
    return found


K8S = manifests()
DEPLOYMENT = K8S["Deployment"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
[CONTAINER] = POD["containers"]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity: CPU ("500m", "2") or bytes ("768Mi", "2Gi")."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


def test_the_manifests_are_a_deployment_service_autoscaler_and_kustomization_listing_them():
    assert set(K8S) == {"Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization"}
    listed = set(K8S["Kustomization"]["resources"])
    assert listed == {doc["_file"] for kind, doc in K8S.items() if kind != "Kustomization"}


def test_probes_and_port_are_the_services():
    [port] = CONTAINER["ports"]
    assert port["containerPort"] == SERVING_PORT
    assert CONTAINER["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert CONTAINER["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    service = K8S["Service"]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == [port["name"]]
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_autoscaler_scales_this_deployment_on_cpu_from_its_replicas():
    hpa = K8S["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    assert hpa["minReplicas"] == DEPLOYMENT["spec"]["replicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    [metric] = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"  # a utilization target needs a CPU request:
    assert "cpu" in CONTAINER["resources"]["requests"]


def test_resources_are_requested_within_limits_and_model_threads_match_the_cpu_limit():
    requests, limits = CONTAINER["resources"]["requests"], CONTAINER["resources"]["limits"]
    assert set(requests) == set(limits) == {"cpu", "memory"}
    for resource in requests:
        assert quantity(requests[resource]) <= quantity(limits[resource]), resource
    env = {e["name"]: e for e in CONTAINER["env"]}
    assert float(env[config.ENV_MODEL_THREADS]["value"]) == quantity(limits["cpu"])


def test_environment_variables_are_settings_the_service_reads():
    settings = {value for name, value in vars(config).items() if name.startswith("ENV_")}
    names = {e["name"] for e in CONTAINER["env"]}
    assert names <= settings, names - settings
    secrets = [e["valueFrom"]["secretKeyRef"] for e in CONTAINER["env"] if "valueFrom" in e]
    assert all(ref["optional"] for ref in secrets)  # applies as is, with or without the Secret


def test_the_pod_runs_as_the_images_non_root_user():
    security = POD["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == bentoml_compat.bento_uid() != 0  # BentoML's `bentoml` user
    assert CONTAINER["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_root_is_read_only_and_tmp_the_one_writable_folder_the_image_writes_to():
    """As the image test runs the image (`--read-only --tmpfs /tmp`): BentoML's home is under /tmp."""
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in POD["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in CONTAINER["volumeMounts"]}
    assert set(mounts) == {"/tmp"} and "emptyDir" in mounts["/tmp"]
    template = (ROOT / "Dockerfile.template").read_text()
    assert re.search(r"^ENV BENTOML_HOME=/tmp/\S+$", template, flags=re.M), "BentoML's home must be writable"


def test_the_image_placeholder_is_make_images_name_and_the_readme_pushes_the_image_set_here():
    default_image = re.search(r"^IMAGE \?= (\S+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert CONTAINER["image"] == default_image.rsplit(":", 1)[0]
    [image] = K8S["Kustomization"]["images"]
    assert image["name"] == CONTAINER["image"]
    pushed = f"{image['newName']}:{image['newTag']}"
    assert f"push {pushed}" in README
    assert f"IMAGE={pushed} make image" in README


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to render the kustomization")
def test_kubectl_kustomize_renders_the_pushed_image():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    [image] = K8S["Kustomization"]["images"]
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


@pytest.mark.serve
def test_the_probe_paths_answer_on_a_real_server(server):
    for probe in ("readinessProbe", "livenessProbe"):
        assert httpx.get(server.url + CONTAINER[probe]["httpGet"]["path"], timeout=10).status_code == 200


# Kubernetes' "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards):
# the volume types it allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"} | {
    "projected",
    "secret",
}


def test_the_pod_passes_the_restricted_pod_security_standard():
    """A namespace labelled pod-security.kubernetes.io/enforce=restricted (hardened and shared clusters)
    refused every pod: 'seccompProfile (pod or container "classifier" must set
    securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'."""
    pod, container = POD["securityContext"], CONTAINER["securityContext"]
    seccomp = container.get("seccompProfile") or pod.get("seccompProfile") or {}
    assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
    assert container.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
    assert container.get("runAsUser", pod.get("runAsUser")) != 0
    assert container["allowPrivilegeEscalation"] is False and not container.get("privileged")
    assert container["capabilities"]["drop"] == ["ALL"] and not container["capabilities"].get("add")
    assert not any(POD.get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPort" not in port for port in CONTAINER["ports"])
    assert all(set(volume) - {"name"} <= RESTRICTED_VOLUMES for volume in POD["volumes"])
