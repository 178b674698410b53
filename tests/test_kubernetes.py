"""deploy/kubernetes: validated against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields
are errors), the Prometheus operator's CRD schemas (vendored in tests/schemas/prometheus-operator, made strict
the way the API server's field validation is), and checked for what the schemas cannot see: names that must
match across manifests, the hardening, the probes, the generated PrometheusRule, a valid exporter config.

No cluster and no kubectl/kustomize binary here: everything is checked statically (the image itself is run in
tests/test_container.py with the same hardening).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import load_rules_generator

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).resolve().parent / "schemas" / "prometheus-operator"
# The oldest Kubernetes release still commonly run, and the newest the validator knows.
VERSIONS = ("1.28.0", "1.37.0")
UID = 10001


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("cdnetworks_k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in resources() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != kind:
            continue
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if f"{group}/{version['name']}" == api_version and version.get("served"):
                return strict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no vendored CRD serves {api_version} {kind}")


def strict(schema: Any) -> Any:
    """The API server rejects unknown fields (kubectl apply --validate=strict): say so in JSON Schema."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validate_custom(doc: dict[str, Any]) -> None:
    schema = crd_schema(doc["kind"], doc["apiVersion"])
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    # Not check_schema(): one of the CRD's patterns (`^(?i)(abort|warn)?$`, a Go regexp) is not a valid Python
    # one; it only matters for a field these manifests do not use.
    jsonschema.Draft7Validator({**schema, "properties": {
        k: v for k, v in schema["properties"].items() if k not in ("apiVersion", "kind", "metadata")}}).validate(body)


# --------------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    image = one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(version: str) -> None:
    builtin = [d for d in resources() if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in builtin} == {"Deployment", "PersistentVolumeClaim", "Service", "Secret", "ConfigMap"}
    for doc in builtin:
        kubernetes_validate.validate(doc, version, strict=True)


def test_operator_kinds_validate_against_the_vendored_crds() -> None:
    custom = [d for d in resources() if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in custom} == {"ServiceMonitor", "PrometheusRule"}
    for doc in custom:
        validate_custom(doc)


def test_the_validators_reject_unknown_fields() -> None:
    # Both checks above must be able to fail: a misspelt field is an error, not silently dropped.
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    monitor = copy.deepcopy(one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(monitor)


def test_prometheusrule_is_generated_from_the_rule_files() -> None:
    generator = load_generator()
    assert (K8S / "prometheusrule.yaml").read_text() == generator.render(), \
        "stale: run python deploy/kubernetes/generate.py"
    rule = one("PrometheusRule")
    expected = [g for name in ("recording.yml", "alerts.yml")
                for g in yaml.safe_load((ROOT / "prometheus" / name).read_text())["groups"]]
    assert rule["spec"]["groups"] == expected


def test_generator_check_mode_notices_a_stale_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # Rules that differ from the committed file make render() differ.
    rules = tmp_path / "prometheus"
    rules.mkdir()
    for name in ("recording.yml", "alerts.yml"):
        (rules / name).write_text((ROOT / "prometheus" / name).read_text().replace("for: 5m", "for: 6m"))
    assert load_generator().render(rules) != (K8S / "prometheusrule.yaml").read_text()


def test_deployment_runs_one_hardened_writer() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID and pod["securityContext"]["fsGroup"] == UID
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^ARG UID={UID}$", dockerfile, flags=re.M)
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 9891}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == "data" and mounts["/etc/cdnetworks-exporter"] == "config"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == one("PersistentVolumeClaim")["metadata"]["name"]
    assert one("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_service_and_servicemonitor_reach_the_pod_with_the_rules_job() -> None:
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    monitor = one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    job = load_rules_generator().Settings().job_selector
    relabel = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert f'job="{relabel["job"]}"' == job


def test_configmap_and_secret_make_a_valid_config(tmp_path: Path) -> None:
    # Lay out the projected volume as the kubelet does, then ask the exporter itself.
    volume = next(v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    configmap, secret = one("ConfigMap"), one("Secret")
    for source in volume["projected"]["sources"]:
        if "configMap" in source:
            assert source["configMap"]["name"] == configmap["metadata"]["name"]
            data = configmap["data"]
            ref = source["configMap"]
        else:
            assert source["secret"]["name"] == secret["metadata"]["name"]
            data = secret["stringData"]
            ref = source["secret"]
        for item in ref["items"]:
            assert item["key"] in data, item
            target = tmp_path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
    result = subprocess.run([sys.executable, "-m", "exporter.cli", "--config.file", str(tmp_path / "config.yml"),
                             "--check-config"], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # Every secret the config names comes from the Secret, none is written in the ConfigMap.
    config = yaml.safe_load(configmap["data"]["config.yml"])
    text = yaml.safe_dump(config)
    assert not re.search(r"\b(api_key|secret_key|register_token):", text)
    for value in secret["stringData"].values():
        assert value not in configmap["data"]["config.yml"]
