"""The global planner as a service: wire protocol adapters (gRPC server, auth, validation), the
pure grant/lease state machine, the audit log and metrics."""
