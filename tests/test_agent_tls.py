"""Agent and planner over mutual TLS, end to end, with certificates generated here: the agent's
runtime (config ``planner: {ca_file, cert_file, key_file, token_file}``) registers and gets its
grant; a client without a certificate, with one from another CA, or in plaintext is refused."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_link_helpers import FixedReplicas, chat_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from fleet_planner.clock import SimulatedClock
from fleet_planner.contract.models import PoolRegistration, PoolReport
from global_planner.policy_file import TenantPolicy
from global_planner.service.auth import Identity, TokenAuthenticator, server_credentials
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.server import PlannerServer
from global_planner.service.state import PlannerState
from local_agent.connectors.virtual import VirtualConnector
from local_agent.planner_link.client import PlannerClient, channel_credentials
from local_agent.runtime import AgentRuntime

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
TOKEN = "tls-agent-token-0123456789"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fleet CA with a planner and an agent certificate, and a rogue CA with an agent certificate."""
    folder = tmp_path_factory.mktemp("pki")
    paths: dict[str, Path] = {}
    for ca_name in ("fleet-ca", "rogue-ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        paths[ca_name], _ = _write(folder, ca_name, _certificate(ca_name, ca_key, None, ca=True), ca_key)
        leaves = ("planner", "agent") if ca_name == "fleet-ca" else ("rogue-agent",)
        for leaf in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            paths[leaf], paths[f"{leaf}-key"] = _write(
                folder, leaf, _certificate(leaf, key, (ca_name, ca_key), ca=False), key
            )
    return paths


@pytest.fixture
async def planner(pki: dict[str, Path]) -> AsyncIterator[tuple[PlannerServer, str]]:
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h100": 4}}, "tenants": {"acme": {"priority": 10}}})
    server = PlannerServer(
        PlannerState(policy, lease_s=30.0),
        auth=TokenAuthenticator({TOKEN: Identity(deployment="chat", tenant="acme")}),
        metrics=ServiceMetrics(CollectorRegistry()),
        clock=SimulatedClock(1000.0),
    )
    credentials = server_credentials(pki["planner"], pki["planner-key"], pki["fleet-ca"])
    port = await server.start("127.0.0.1:0", credentials)
    yield server, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_the_agent_reaches_the_planner_over_mutual_tls(
    tmp_path: Path, pki: dict[str, Path], planner: tuple[PlannerServer, str]
) -> None:
    server, address = planner
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = chat_config(
        tmp_path,
        {
            "address": address,
            "ca_file": str(pki["fleet-ca"]),
            "cert_file": str(pki["agent"]),
            "key_file": str(pki["agent-key"]),
            "token_file": "token",
        },
    )
    assert config.planner is not None and config.planner.tls and config.planner.token() == TOKEN
    runtime = AgentRuntime(config, FixedReplicas(ready=1), VirtualConnector(tmp_path / "targets.json", "chat", ["agg"]))
    try:
        await runtime.tick()
        assert server.state.deployments() == ["chat"]
        assert runtime.last_effects is not None and runtime.last_effects.source == "planner"
        assert runtime.planner is not None and runtime.planner.last_error is None
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("material", "why"),
    [
        (("fleet-ca", None, None), "no client certificate"),
        (("fleet-ca", "rogue-agent", "rogue-agent-key"), "a certificate from another CA"),
        ((None, None, None), "plaintext"),
    ],
)
async def test_the_planner_refuses_clients_without_a_fleet_certificate(
    pki: dict[str, Path], planner: tuple[PlannerServer, str], material: tuple[str | None, ...], why: str
) -> None:
    server, address = planner
    ca, cert, key = (pki[name].read_bytes() if name is not None else None for name in material)
    pools = [PoolRegistration(role="agg", gpu_type="h100", gpus_per_replica=1, min_replicas=0, max_replicas=4)]
    client = PlannerClient(
        address, TOKEN, "chat", "acme", "chat", pools, timeout_s=2.0, credentials=channel_credentials(ca, cert, key)
    )
    try:
        answered = await client.send([PoolReport(role="agg", ready=1)])
    finally:
        await client.close()
    assert not answered, why
    assert client.last_error is not None and "UNAVAILABLE" in client.last_error
    assert server.state.deployments() == [], f"{why}: never registered"


def test_token_comes_from_a_file_or_a_named_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PLANNER_TOKEN", " from-env ")
    from_env = chat_config(tmp_path, {"address": "gp:1", "token_env": "MY_PLANNER_TOKEN"}).planner
    assert from_env is not None and from_env.token() == "from-env" and not from_env.tls
    (tmp_path / "empty").write_text("\n")
    empty = chat_config(tmp_path, {"address": "gp:1", "token_file": "empty"}).planner
    assert empty is not None
    with pytest.raises(ValueError, match="empty"):
        empty.token()
