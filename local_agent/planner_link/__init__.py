"""The agent side of the agent-planner link: building reports from decisions, and the gRPC client."""
