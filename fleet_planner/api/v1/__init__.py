"""Protocol v1 (generated code only: ``planner_pb2``, ``planner_pb2_grpc``)."""
