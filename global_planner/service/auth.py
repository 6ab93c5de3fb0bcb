"""Agent identity: one bearer token per deployment, from a YAML tokens file; optional mTLS.

Tokens file (``--tokens``)::

    s3cr3t-token-for-chat: {deployment: chat-llama, tenant: acme}
    another-token: {deployment: batch-qwen, tenant: beta}

The token, not the payload, says who the caller is: a payload naming another deployment or
tenant is refused (PERMISSION_DENIED), so tenants cannot affect each other through the protocol.
Tokens are kept only as SHA-256 digests (looked up by digest, so timing reveals nothing of them).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import grpc
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fleet_planner.bounds import Name
from fleet_planner.errors import InputError, read_input_text, unreadable
from fleet_planner.yaml_input import load_yaml


class Identity(BaseModel):
    """Who an authenticated caller is allowed to act for."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    deployment: Name
    tenant: Name


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        super().__init__(message)


class TokenAuthenticator:
    """Maps ``authorization: Bearer <token>`` metadata to an :class:`Identity`."""

    def __init__(self, tokens: dict[str, Identity]):
        self._by_digest = {_digest(token): identity for token, identity in tokens.items()}

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuthenticator:
        text = read_input_text(path)
        try:
            data = load_yaml(text)
        except yaml.YAMLError as error:
            raise InputError(f"invalid YAML: {error}", file=path) from error
        if not isinstance(data, dict) or not data:
            raise InputError("must map each token to {deployment: ..., tenant: ...}", file=path)
        tokens: dict[str, Identity] = {}
        for index, (token, entry) in enumerate(data.items()):
            where = f"tokens[{index}]"  # never echo a token into logs
            if not isinstance(token, str) or len(token) < 16:
                raise InputError("token must be a string of at least 16 characters", file=path, field=where)
            try:
                tokens[token] = Identity.model_validate(entry)
            except ValidationError as error:
                first = error.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise InputError(first["msg"], file=path, field=f"{where}.{loc}" if loc else where) from error
        return cls(tokens)

    def identify(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Identity:
        """The caller's identity, or :class:`AuthError` UNAUTHENTICATED."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata")
        value = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "authorization must be 'Bearer <token>'")
        identity = self._by_digest.get(_digest(token.strip()))
        if identity is not None:
            return identity
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")


def authorize(identity: Identity | None, deployment: str, tenant: str | None = None) -> None:
    """PERMISSION_DENIED unless the caller acts for its own deployment (and tenant).

    ``identity`` None means the server runs without tokens (explicitly insecure).
    """
    if identity is None:
        return
    if deployment != identity.deployment:
        raise AuthError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"deployment: token is for {identity.deployment!r}, not {deployment!r}",
        )
    if tenant is not None and tenant != identity.tenant:
        raise AuthError(
            grpc.StatusCode.PERMISSION_DENIED, f"tenant: token is for tenant {identity.tenant!r}, not {tenant!r}"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS for the listener; with ``client_ca`` every agent must present a certificate it signed.

    The files are checked here (readable, PEM, the key matches the certificate, the CA parses), so
    a mistake is one clear line instead of gRPC's later ``Failed to bind``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        chain = Path(cert).read_bytes()
        private = Path(key).read_bytes()
        roots = Path(client_ca).read_bytes() if client_ca else None
    except OSError as error:
        raise InputError(f"cannot read: {unreadable(error)}", file=error.filename) from error
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")  # never prompt
    except ssl.SSLError as error:
        raise InputError(
            "--tls-cert/--tls-key are not a PEM certificate chain and its matching private key"
            f" ({error.reason or error})",
            file=cert,
        ) from error
    if client_ca:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as error:
            raise InputError(
                f"--tls-client-ca is not a PEM CA certificate ({error.reason or error})", file=client_ca
            ) from error
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
