"""deploy/kubernetes, both variants (the single replica on SQLite, and ha/: several replicas on PostgreSQL):
validated against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors), the
Prometheus operator's CRD schemas (vendored in tests/schemas/prometheus-operator, made strict the way the API
server's field validation is), and checked for what the schemas cannot see: names that must match across
manifests, the hardening, the probes, the generated files, a valid exporter config (for ha/, against a real
PostgreSQL).

No cluster here: everything is checked statically (the image itself is run in tests/test_container.py with the
same hardening); where kubectl is installed, its kustomize also renders both kustomizations.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import load_rules_generator, require_postgres, require_tool

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
HA = K8S / "ha"
VARIANTS = {"single": K8S, "ha": HA}
variants = pytest.mark.parametrize("variant", list(VARIANTS))
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


def resources(variant: str = "single") -> list[dict[str, Any]]:
    base = VARIANTS[variant]
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((base / name).read_text()) if d)
    return docs


def one(kind: str, variant: str = "single") -> dict[str, Any]:
    found = [d for d in resources(variant) if d["kind"] == kind]
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


BUILTIN_KINDS = {
    "single": {"Deployment", "PersistentVolumeClaim", "Service", "Secret", "ConfigMap"},
    "ha": {"Deployment", "PodDisruptionBudget", "Service", "Secret", "ConfigMap"},
}


@variants
def test_kustomization_lists_every_manifest(variant: str) -> None:
    base = VARIANTS[variant]
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    image = one("Deployment", variant)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]


@variants
@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(variant: str, version: str) -> None:
    builtin = [d for d in resources(variant) if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in builtin} == BUILTIN_KINDS[variant]
    for doc in builtin:
        kubernetes_validate.validate(doc, version, strict=True)


@variants
def test_operator_kinds_validate_against_the_vendored_crds(variant: str) -> None:
    custom = [d for d in resources(variant) if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in custom} == {"ServiceMonitor", "PrometheusRule"}
    for doc in custom:
        validate_custom(doc)


@variants
def test_kustomize_renders_the_manifests(variant: str) -> None:
    """What ``kubectl apply -k`` would send: exactly the manifests the other tests read (kustomize only adds the
    image tag), so that the kustomization itself is valid too."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run([kubectl, "kustomize", str(VARIANTS[variant])], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    expected = {key(d): d for d in resources(variant)}
    assert sorted(key(d) for d in rendered) == sorted(expected)
    for doc in rendered:
        want = copy.deepcopy(expected[key(doc)])
        if doc["kind"] == "Deployment":
            for c in want["spec"]["template"]["spec"]["containers"]:
                tag = yaml.safe_load((VARIANTS[variant] / "kustomization.yaml").read_text())["images"][0]["newTag"]
                c["image"] = c["image"].split(":")[0] + ":" + tag
        assert doc == want, key(doc)


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


@variants
def test_prometheusrule_is_generated_from_the_rule_files(variant: str) -> None:
    generator = load_generator()
    assert (VARIANTS[variant] / "prometheusrule.yaml").read_text() == generator.render(), \
        "stale: run python deploy/kubernetes/generate.py"
    rule = one("PrometheusRule", variant)
    expected = [g for name in ("recording.yml", "alerts.yml", "slo.yml")
                for g in yaml.safe_load((ROOT / "prometheus" / name).read_text())["groups"]]
    assert rule["spec"]["groups"] == expected


def test_every_generated_file_is_up_to_date() -> None:
    outputs = load_generator().outputs()
    assert {p.relative_to(K8S).as_posix() for p in outputs} == {
        "prometheusrule.yaml", *(f"ha/{p.name}" for p in HA.glob("*.yaml"))}
    for path, text in outputs.items():
        assert path.read_text() == text, f"stale: run python deploy/kubernetes/generate.py ({path})"


def test_generator_check_mode_notices_a_stale_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # Rules that differ from the committed file make render() differ.
    rules = tmp_path / "prometheus"
    rules.mkdir()
    for name in ("recording.yml", "alerts.yml", "slo.yml"):
        (rules / name).write_text((ROOT / "prometheus" / name).read_text().replace("for: 5m", "for: 6m"))
    assert load_generator().render(rules) != (K8S / "prometheusrule.yaml").read_text()
    # So does a change of the single variant for ha/: a probe changed there reaches ha/deployment.yaml.
    k8s = tmp_path / "kubernetes"
    shutil.copytree(K8S, k8s)
    (k8s / "deployment.yaml").write_text((K8S / "deployment.yaml").read_text().replace(
        "failureThreshold: 90", "failureThreshold: 91"))
    changed = {p.name for p, text in load_generator().outputs(k8s).items() if text != p.read_text()}
    assert changed == {"deployment.yaml"}


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


def test_ha_deployment_runs_replicas_of_the_same_pod_on_postgresql() -> None:
    single, ha = one("Deployment"), one("Deployment", "ha")
    spec = ha["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod, single_pod = spec["template"]["spec"], single["spec"]["template"]["spec"]
    # The same pod: everything but the store's volume, the Secret's extra key and the anti-affinity.
    for key in ("securityContext", "automountServiceAccountToken", "enableServiceLinks",
                "terminationGracePeriodSeconds"):
        assert pod[key] == single_pod[key], key
    (container,), (single_container,) = pod["containers"], single_pod["containers"]
    for key in ("image", "env", "ports", "startupProbe", "livenessProbe", "readinessProbe", "resources",
                "securityContext", "args", "command"):
        assert container.get(key) == single_container.get(key), key
    # No volume of its own: no PVC, nothing at /data.
    assert "persistentVolumeClaim" not in yaml.safe_dump(ha)
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/cdnetworks-exporter", "/tmp"}
    assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}
    # Preferred (not required) anti-affinity across nodes, for the pods of this Deployment.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    # A drain leaves one replica, and can always proceed.
    pdb = one("PodDisruptionBudget", "ha")
    assert pdb["spec"]["minAvailable"] == 1 < spec["replicas"]
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


@variants
def test_service_and_servicemonitor_reach_every_pod_with_the_rules_job(variant: str) -> None:
    pod_labels = one("Deployment", variant)["spec"]["template"]["metadata"]["labels"]
    service = one("Service", variant)
    # Every replica behind the Service (its selector is the Deployment's, no more), and no affinity that would
    # pin clients (the vendor's notifications) to one of them.
    assert service["spec"]["selector"] == one("Deployment", variant)["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"].get("sessionAffinity", "None") == "None"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    monitor = one("ServiceMonitor", variant)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The operator scrapes each endpoint of the Service, i.e. each replica on its own (its self-metrics differ);
    # nothing may keep only some of them.
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert all(r.get("action", "replace") == "replace" for r in endpoint["relabelings"])
    job = load_rules_generator().Settings().job_selector
    relabel = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert f'job="{relabel["job"]}"' == job


def projected_config(tmp_path: Path, variant: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The config volume laid out as the kubelet does; the config file, the ConfigMap and the Secret."""
    volume = next(v for v in one("Deployment", variant)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "config")
    configmap, secret = one("ConfigMap", variant), one("Secret", variant)
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
    return tmp_path / "config.yml", configmap, secret


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", "--config.file", str(config), "--check-config"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


@variants
def test_configmap_and_secret_make_a_valid_config(tmp_path: Path, variant: str, request) -> None:
    # Lay out the projected volume as the kubelet does, then ask the exporter itself.
    config, configmap, secret = projected_config(tmp_path, variant)
    if variant == "ha":
        # The Secret's URL is a placeholder: the real cluster's takes its place, which --check-config asks.
        require_postgres()
        (tmp_path / "secrets" / "database_url").write_text(request.getfixturevalue("postgres_url"))
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    if variant == "ha":
        assert "storage.url: postgresql://" in result.stdout and "the database answers" in result.stdout
    # Every secret the config names comes from the Secret, none is written in the ConfigMap.
    parsed = yaml.safe_load(configmap["data"]["config.yml"])
    text = yaml.safe_dump(parsed)
    assert not re.search(r"\b(api_key|secret_key|register_token):", text)
    assert not {"url", "password"} & set(parsed.get("storage", {}))
    for value in secret["stringData"].values():
        assert value not in configmap["data"]["config.yml"]


def test_ha_config_is_the_single_config_with_the_store_in_the_secret() -> None:
    single = yaml.safe_load(one("ConfigMap")["data"]["config.yml"])
    ha = yaml.safe_load(one("ConfigMap", "ha")["data"]["config.yml"])
    assert ha.pop("storage") == {"url_file": "secrets/database_url"}
    assert ha == single
    url = one("Secret", "ha")["stringData"]["database-url"]
    assert url.startswith("postgresql://") and "sslmode=verify-full" in url
    assert {k: v for k, v in one("Secret", "ha")["stringData"].items() if k != "database-url"} == \
        one("Secret")["stringData"]


def test_ha_placeholder_database_is_reported_not_a_traceback(tmp_path: Path) -> None:
    # As shipped, the URL names a host that does not exist: --check-config says so (exit 3), password masked.
    config, _, _ = projected_config(tmp_path, "ha")
    result = check_config(config)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "storage.url: postgresql://cdnetworks:***@postgres.example.internal:5432/" in result.stderr
    assert "change-me@" not in result.stderr and "Traceback" not in result.stderr


def test_readme_scrape_config_for_replicas_without_the_operator(tmp_path: Path) -> None:
    """The README's scrape config for the HA variant without the operator: valid for Prometheus, the rules' job,
    and it keeps the exporter's pods (each replica), not the Service's single address."""
    promtool = require_tool("promtool")
    section = (ROOT / "README.md").read_text().split("### Kubernetes", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```yaml\n(\s*scrape_configs:.*?)\n\s*```", section, flags=re.S)
    assert block is not None
    config = yaml.safe_load(textwrap.dedent(block.group(1)))
    (job,) = config["scrape_configs"]
    assert f'job="{job["job_name"]}"' == load_rules_generator().Settings().job_selector
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    keep = next(r for r in job["relabel_configs"] if r["action"] == "keep")
    pod = one("Deployment", "ha")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert keep["regex"] == f"{pod['metadata']['labels']['app.kubernetes.io/name']};{container['ports'][0]['name']}"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest (the relabelling) on a static
        # target instead.
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["127.0.0.1:9891"]}]
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True,
                                timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
