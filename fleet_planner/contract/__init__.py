"""The agent-planner contract: validated models of every protocol message and their protobuf conversions."""
