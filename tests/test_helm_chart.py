"""The Helm chart, rendered and linted by Helm's own Go code (helm-python-sdk, offline), for default
and non-default values; every rendered manifest validated with kubernetes-validate; RBAC least
privilege read from the rendered Roles; the agent config it renders is one the agent accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from local_agent.config import AgentConfig, parse_config

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts/fleet-planner"
PROFILE = str(REPO / "examples/profiles/llama3.1-8b_h100_vllm_tp1")
NOT_IN_KUBERNETES_VALIDATE = {"ServiceMonitor", "Certificate"}  # CRD kinds: checked for shape only


def _agent(name: str, routes: list[str], policies: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "dgd": name,
        "token": f"token-{name}",
        "httproutes": routes,
        "rateLimitPolicies": policies,
        "config": {
            "deployment": {
                "name": name,
                "tenant": "acme",
                "endpoint": "chat",
                "mode": "agg",
                "sla": {"ttft_ms": 800, "itl_ms": 20},
                "pools": {"agg": {"profile": PROFILE, "gpu_type": "h100", "max": 8}},
            },
            "prometheus": {"url": "http://prometheus:9090"},
            "connector": {
                "kind": "kubernetes",
                "dgd": name,
                "httproute": {"name": "chat", "backends": {name: f"{name}-frontend"}},
            },
        },
    }


NON_DEFAULT: dict[str, Any] = {
    "planner": {
        "replicas": 3,
        "tokens": {"token-llama": {"deployment": "llama", "tenant": "acme"}},
        "state": {"storageClassName": "nfs", "size": "5Gi"},
        "pdb": {"minAvailable": 2},
    },
    "agents": [_agent("llama", ["chat"], ["chat-limit"]), _agent("mixtral", ["chat"], [])],
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
}
SINGLE: dict[str, Any] = {
    "planner": {
        "replicas": 1,
        "leaderElection": {"enabled": False},
        "pdb": {"enabled": False},
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}},
    },
    "grafanaDashboard": {"enabled": False},
}
MTLS_CERT_MANAGER: dict[str, Any] = {  # mutual TLS, certificates from cert-manager, agents included
    "planner": {"tls": {"certManager": {"enabled": True}, "mutual": True}},
    "agents": [_agent("llama", ["chat"], [])],
}
TLS_SECRETS: dict[str, Any] = {  # server TLS from existing Secrets; the agent's token from its own Secret
    "planner": {"tls": {"existingSecret": "planner-tls"}},
    "agents": [{**_agent("llama", ["chat"], []), "token": "", "tokenSecret": "llama-token", "tlsSecret": "llama-ca"}],
}


def _render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values, name="fp", namespace="fleet", is_install=True)
    docs = [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]
    return docs


@pytest.mark.parametrize(
    "values",
    [None, NON_DEFAULT, SINGLE, MTLS_CERT_MANAGER, TLS_SECRETS],
    ids=["default", "non-default", "single", "mtls-cert-manager", "tls-secrets"],
)
def test_chart_lints_renders_and_validates(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = _render(values)
    for doc in docs:
        if doc["kind"] in NOT_IN_KUBERNETES_VALIDATE:
            assert doc["apiVersion"] in ("monitoring.coreos.com/v1", "cert-manager.io/v1") and doc["spec"]
            continue
        kubernetes_validate.validate(doc, "1.30", strict=True)
    kinds = sorted({d["kind"] for d in docs})
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"} <= set(kinds)
    if values is SINGLE:
        assert "Lease" not in kinds and "PodDisruptionBudget" not in kinds
        args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--tls-cert=/etc/fleet-planner/tls/tls.crt" in args and "--leader-elect" not in args
    else:
        assert {"Lease", "Role", "RoleBinding", "PodDisruptionBudget"} <= set(kinds)


def _agent_config(
    docs: list[dict[str, Any]], tmp_path: Path, name: str = "llama"
) -> tuple[AgentConfig, dict[str, str]]:
    """The rendered agent config, parsed by the agent (its mounted files stood in for by
    files under ``tmp_path``), and the Secret mounted at each of the agent's mount paths."""
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    raw = yaml.safe_load(by[("ConfigMap", f"fp-agent-{name}")]["data"]["agent.yaml"])
    pod = by[("Deployment", f"fp-agent-{name}")]["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: secrets.get(m["name"], "") for m in pod["containers"][0]["volumeMounts"]}
    assert "env" not in pod["containers"][0]  # the token is a mounted file, never an environment variable
    for key in ("ca_file", "cert_file", "key_file", "token_file"):
        if key in raw["planner"]:
            mounted = Path(raw["planner"][key])
            assert mounts.get(str(mounted.parent)), (key, mounts)  # the file's directory is a mounted Secret
            stand_in = tmp_path / name / mounted.parent.name / mounted.name
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("token\n" if key == "token_file" else "PEM\n")
            raw["planner"][key] = str(stand_in)
    return parse_config(raw, base_dir=REPO), mounts  # the agent accepts what the chart renders


def test_agents_reach_a_mutual_tls_planner(tmp_path: Path) -> None:
    docs = _render(MTLS_CERT_MANAGER)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    args = by[("Deployment", "fp-planner")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert (
        "--tls-client-ca=/etc/fleet-planner/tls/ca.crt" in args and "--tls-cert=/etc/fleet-planner/tls/tls.crt" in args
    )
    client_cert = by[("Certificate", "fp-agent-llama")]["spec"]
    assert client_cert["secretName"] == "fp-agent-llama-tls" and "client auth" in client_cert["usages"]
    assert client_cert["issuerRef"] == by[("Certificate", "fp-planner")]["spec"]["issuerRef"]  # one CA for both sides
    config, mounts = _agent_config(docs, tmp_path)
    link = config.planner
    assert link is not None
    assert link.tls and link.cert_file is not None and link.key_file is not None and link.ca_file is not None
    assert link.token() == "token"
    assert mounts["/etc/fleet-agent/planner-tls"] == "fp-agent-llama-tls"
    assert mounts["/etc/fleet-agent/planner-token"] == "fp-agent-llama-planner-token"
    assert by[("Secret", "fp-agent-llama-planner-token")]["stringData"]["token"] == "token-llama"


def test_agents_use_existing_tls_and_token_secrets(tmp_path: Path) -> None:
    docs = _render(TLS_SECRETS)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    planner = by[("Deployment", "fp-planner")]["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "planner-tls"}} in planner["volumes"]
    assert not [a for a in planner["containers"][0]["args"] if a.startswith("--tls-client-ca")]  # server TLS only
    assert "Certificate" not in {d["kind"] for d in docs} and ("Secret", "fp-agent-llama-planner-token") not in by
    config, mounts = _agent_config(docs, tmp_path)
    link = config.planner
    assert link is not None
    assert link.ca_file is not None and link.cert_file is None and link.token_file is not None
    assert (
        mounts["/etc/fleet-agent/planner-tls"] == "llama-ca"
        and mounts["/etc/fleet-agent/planner-token"] == "llama-token"
    )


def test_non_default_values_shape_the_release(tmp_path: Path) -> None:
    docs = _render(NON_DEFAULT)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    planner = by[("Deployment", "fp-planner")]["spec"]
    args = planner["template"]["spec"]["containers"][0]["args"]
    assert planner["replicas"] == 3 and "--leader-elect" in args and not [a for a in args if a.startswith("--tls")]
    assert by[("PersistentVolumeClaim", "fp-state")]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert by[("PodDisruptionBudget", "fp-planner")]["spec"]["minAvailable"] == 2
    tokens = yaml.safe_load(by[("Secret", "fp-tokens")]["stringData"]["tokens.yaml"])
    assert tokens == {"token-llama": {"deployment": "llama", "tenant": "acme"}}
    for name in ("llama", "mixtral"):
        config, _ = _agent_config(docs, tmp_path, name)
        assert (
            config.planner is not None
            and config.planner.address == "fp-planner:7070"
            and config.connector.kind == "kubernetes"
        )
        assert config.telemetry is not None and config.telemetry.listen == "0.0.0.0:9100"
    dashboard = json.loads(by[("ConfigMap", "fp-dashboard")]["data"]["fleet-planner.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "fleet_planner_inventory_gpus",
        "fleet_planner_granted_gpus",
        "fleet_planner_lent_gpus",
        "fleet_agent_replicas",
        "fleet_agent_observed_ttft_seconds",
        "fleet_planner_admission_rps",
        "fleet_agent_decisions_total",
        "fleet_agent_resumed",
        "fleet_agent_checkpoint_writes_total",
    ):
        assert metric in exprs  # fmt: skip


def test_agents_keep_their_checkpoint_in_a_writable_state_folder() -> None:
    """The root file system is read-only: the agent's state folder (its checkpoint) is a volume."""
    agents = [d for d in _render(NON_DEFAULT) if d["kind"] == "Deployment" and "-agent-" in d["metadata"]["name"]]
    assert agents
    for doc in agents:
        pod = doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert "--state-dir=/var/lib/fleet-agent" in container["args"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/fleet-agent")
        assert not mount.get("readOnly") and "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"])


def test_pods_run_non_root_and_read_only() -> None:
    for doc in _render(NON_DEFAULT):
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
            assert security["capabilities"]["drop"] == ["ALL"]


def test_rbac_is_least_privilege() -> None:
    docs = _render(NON_DEFAULT)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    allowed: dict[tuple[str, str], set[str]] = {
        ("coordination.k8s.io", "leases"): {"get", "update"},
        ("nvidia.com", "dynamographdeployments"): {"get", "list", "watch", "patch"},
        ("nvidia.com", "dynamographdeploymentscalingadapters"): {"get", "list", "watch"},
        ("nvidia.com", "dynamographdeploymentscalingadapters/scale"): {"patch"},
        ("", "pods"): {"get", "list", "watch"},
        ("gateway.networking.k8s.io", "httproutes"): {"get", "patch"},
        ("gateway.envoyproxy.io", "backendtrafficpolicies"): {"patch"},
    }
    must_be_named = {"leases", "httproutes", "backendtrafficpolicies"}
    roles = [d for d in docs if d["kind"] == "Role"]
    assert len(roles) == 3  # the planner's and one per agent
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert set(rule["verbs"]) <= allowed[(group, resource)], (role["metadata"]["name"], rule)
                    if resource in must_be_named:
                        assert rule.get("resourceNames"), rule
            if "patch" in rule["verbs"] and rule["resources"] == ["dynamographdeployments"]:
                assert rule["resourceNames"] in (["llama"], ["mixtral"])  # each agent patches only its own DGD
    planner_role = next(r for r in roles if r["metadata"]["name"] == "fp-planner")
    lease_rule = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["fleet-planner"]}
    assert planner_role["rules"] == [{**lease_rule, "verbs": ["get", "update"]}]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"planner": {"replicas": 2, "leaderElection": {"enabled": False}}}, "needs planner.leaderElection.enabled"),
        ({"planner": {"replicaz": 2}}, "replicaz"),
        ({"agents": [{**_agent("x", [], []), "dgd": "Bad_Name"}]}, "dgd"),
        ({"planner": {"leaseSeconds": 5, "roundSeconds": 5}}, "leaseSeconds must exceed"),
        ({"planner": {"tls": {"existingSecret": "s"}}, "agents": [_agent("x", [], [])]}, "needs the agent's tlsSecret"),
        ({"planner": {"tls": {"mutual": True}}}, "mutual needs planner TLS"),
        ({"planner": {"tls": {"existingSecret": "s", "certManager": {"enabled": True}}}}, "not both"),
    ],
)
def test_bad_values_fail_loudly(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(helm.HelmError, match=problem):
        _render(values)
