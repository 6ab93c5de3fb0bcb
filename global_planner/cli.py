"""``fleet-planner serve`` (the global planner process) and ``fleet-planner explain DECISION_ID``.

Also runnable alone:
``python -m global_planner.cli serve --policy tenants.yaml --listen 127.0.0.1:7070 --tokens tokens.yaml``.
On start, ``serve`` prints ``serving on HOST:PORT`` (the bound port when ``:0`` was asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server

from fleet_planner.cli import run
from fleet_planner.errors import InputError, path_kind, unreadable

if TYPE_CHECKING:
    import grpc

    from global_planner.service.audit import AuditLog, Recovery
    from global_planner.service.leader import ElectionConfig
    from global_planner.service.server import PlannerServer
    from global_planner.service.state import PlannerState

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the global planner (gRPC, periodic allocation rounds)")
    serve.add_argument("--policy", required=True, help="tenant policy YAML (reloaded on change)")
    serve.add_argument("--listen", required=True, help="HOST:PORT to serve gRPC on (port 0 picks one)")
    serve.add_argument(
        "--state-dir", default="planner-state", help="audit log folder (decisions.jsonl); resumed on restart"
    )
    serve.add_argument("--tokens", help="YAML: token -> {deployment, tenant} (agents authenticate with these)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve without --tokens: any caller may act for any deployment (tests and demos only)",
    )
    serve.add_argument(
        "--round-s",
        type=float,
        default=30.0,
        help="seconds between timed allocation rounds (default: the agents' default tick_s, as simulated)",
    )
    serve.add_argument(
        "--lease-s", type=float, default=120.0, help="lease length of a grant (default: four rounds, as simulated)"
    )
    serve.add_argument("--time-limit-s", type=float, default=0.2, help="CP-SAT time limit per round")
    serve.add_argument("--metrics", help="HOST:PORT for Prometheus metrics over HTTP")
    serve.add_argument("--tls-cert", help="server certificate chain (PEM); enables TLS")
    serve.add_argument("--tls-key", help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", help="CA (PEM) agents' client certificates must chain to (mTLS)")
    election = serve.add_argument_group("leader election (several replicas; needs a Kubernetes API)")
    election.add_argument("--leader-elect", action="store_true", help="grant only while holding the Lease")
    election.add_argument("--lease-name", default="fleet-planner", help="coordination.k8s.io/v1 Lease name")
    election.add_argument("--lease-namespace", help="the Lease's namespace (default: the pod's own)")
    election.add_argument("--identity", help="this replica's name in the Lease (default: $POD_NAME, else the hostname)")
    election.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    election.add_argument("--election-lease-s", type=float, default=15.0, help="Lease duration")
    election.add_argument("--election-renew-deadline-s", type=float, default=10.0, help="leader steps down after")
    election.add_argument("--election-retry-s", type=float, default=2.0, help="seconds between renew/acquire tries")
    serve.add_argument(
        "--rotate-mb", type=float, default=64.0, help="start a new audit log segment past this size (restart reads one)"
    )
    serve.add_argument("--keep-segments", type=int, default=16, help="rotated audit log segments kept for explain")
    serve.add_argument(
        "--round-on-ask",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a report asking for fewer replicas, or for GPUs free now, runs a round before its reply (no grant lag;"
        " default on, as in the simulator; --no-round-on-ask answers from the last timed round)",
    )
    serve.set_defaults(run=_serve)

    explain = subparsers.add_parser("explain", help="why each pool got what it got in one allocation round")
    explain.add_argument("decision_id", type=int, help="decision id from targets, logs or decisions.jsonl")
    explain.add_argument("--state-dir", default="planner-state", help="folder holding decisions.jsonl")
    explain.set_defaults(run=_explain)


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"must be HOST:PORT (got {value!r})", field=flag)
    return host, int(port)


def _explain(args: argparse.Namespace) -> int:
    from global_planner.service.audit import AUDIT_FILE, explain, find_record, segments

    path = Path(args.state_dir) / AUDIT_FILE
    if path_kind(path) is None and not segments(args.state_dir):
        raise InputError("no audit log here (is --state-dir right?)", file=path)
    print(explain(find_record(args.state_dir, args.decision_id)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from global_planner.policy_file import PolicyWatcher
    from global_planner.service.auth import TokenAuthenticator, server_credentials
    from global_planner.service.metrics import ServiceMetrics
    from global_planner.service.server import PlannerServer
    from global_planner.service.state import PlannerState

    _check_serve_args(args)
    election = elector_config(args)
    registry = CollectorRegistry()
    watcher = PolicyWatcher(args.policy, registry=registry)
    auth = TokenAuthenticator.from_file(args.tokens) if args.tokens else None
    if auth is None:
        log.warning("--insecure: any caller may act for any deployment (tests and demos only)")
    credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    state = PlannerState(
        watcher.policy, lease_s=args.lease_s, report_interval_s=args.round_s, time_limit_s=args.time_limit_s
    )

    def restore() -> None:
        """Resume from the audit log as it is now: at start, or (elected replicas) on winning the
        Lease, from the shared state dir as the last leader left it. A follower never opens the
        log, so it cannot seal a tail the leader is still writing."""
        audit = _open_audit(args.state_dir, int(args.rotate_mb * (1 << 20)), args.keep_segments)
        server.audit = server.service.audit = audit
        state.resume(audit.recovery, server.clock.now())
        _log_resume(audit.recovery, state)

    if args.metrics:
        host, port = _host_port(args.metrics, "--metrics")
        start_http_server(port, addr=host, registry=registry)
    server = PlannerServer(
        state,
        auth=auth,
        metrics=ServiceMetrics(registry),
        watcher=watcher,
        round_s=args.round_s,
        round_on_ask=args.round_on_ask,
    )
    if election is not None:
        from global_planner.service.leader import serve_elected

        kubeconfig = Path(args.kubeconfig) if args.kubeconfig else None
        return asyncio.run(
            serve_elected(
                server,
                election,
                args.listen,
                credentials,
                restore,
                kubeconfig=kubeconfig,
                state_dir=Path(args.state_dir),
            )
        )
    restore()
    try:
        asyncio.run(_run(server, args.listen, credentials))
    except OSError as error:
        raise InputError(str(error), field="--listen") from error
    return 0


def elector_config(args: argparse.Namespace) -> ElectionConfig | None:
    """The election settings from the flags (None without --leader-elect)."""
    if not args.leader_elect:
        return None
    from pydantic import ValidationError

    from fleet_planner.kube import default_namespace
    from global_planner.service.leader import ElectionConfig

    try:
        return ElectionConfig(
            namespace=default_namespace(args.lease_namespace),
            name=args.lease_name,
            identity=args.identity or os.environ.get("POD_NAME") or socket.gethostname(),
            lease_s=args.election_lease_s,
            renew_deadline_s=args.election_renew_deadline_s,
            retry_s=args.election_retry_s,
        )
    except ValidationError as exc:
        raise InputError(exc.errors()[0]["msg"], field="--election-lease-s") from None


def _check_serve_args(args: argparse.Namespace) -> None:
    """Every flag problem is one line before anything starts."""
    _host_port(args.listen, "--listen")
    for flag, value in (
        ("--round-s", args.round_s),
        ("--lease-s", args.lease_s),
        ("--time-limit-s", args.time_limit_s),
        ("--rotate-mb", args.rotate_mb),
    ):
        if not value > 0:
            raise InputError(f"must be > 0 (got {value})", field=flag)
    if args.keep_segments < 0:
        raise InputError(f"must be >= 0 (got {args.keep_segments})", field="--keep-segments")
    if args.lease_s <= 2 * args.round_s:
        raise InputError(
            f"must exceed twice --round-s ({args.round_s}) or leases lapse between rounds", field="--lease-s"
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key go together", field="--tls-cert" if args.tls_key else "--tls-key")
    if args.tls_client_ca and not args.tls_cert:
        raise InputError(
            "needs --tls-cert and --tls-key (mTLS is TLS with client certificates)", field="--tls-client-ca"
        )
    if not args.tokens and not args.insecure:
        raise InputError(
            "no --tokens: give a tokens file, or --insecure to let any caller act for any deployment", field="--tokens"
        )
    if args.tokens and args.insecure:
        raise InputError("--insecure and --tokens contradict each other", field="--insecure")


def _open_audit(state_dir: str, rotate_bytes: int, keep_segments: int) -> AuditLog:
    from global_planner.service.audit import AuditLog

    try:
        return AuditLog(state_dir, rotate_bytes=rotate_bytes, keep_segments=keep_segments)
    except OSError as error:
        raise InputError(f"cannot open the audit log: {unreadable(error)}", file=state_dir) from error


def _log_resume(recovery: Recovery, state: PlannerState) -> None:
    """Unreadable lines were already reported (file:line) while recovering."""
    if recovery.record is not None:
        log.info(
            "resumed after decision %d (next %d): %d deployment(s) held until they report",
            recovery.record.decision_id,
            state.next_decision_id,
            len(recovery.record.deployments),
        )
    if recovery.newest_lost:
        log.warning(
            "the newest audit record is unreadable: no scale-up is granted for one lease (%.0f s)", state.lease_s
        )


async def _run(server: PlannerServer, listen: str, credentials: grpc.ServerCredentials | None) -> None:
    port = await server.start(listen, credentials)
    print(f"serving on {listen.rpartition(':')[0]}:{port}", flush=True)
    server.start_rounds()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m global_planner.cli", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
