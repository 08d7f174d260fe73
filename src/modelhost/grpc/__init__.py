"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``).

``grpc_service.proto`` is the service definition; ``grpc_service_pb2*.py`` are generated from it
and checked in (regenerate with ``python -m modelhost.grpc.generate``); ``server`` is the
service. Importing ``modelhost.grpc.server`` needs the ``grpc`` extra.
"""
