"""Regenerate the checked-in stubs from ``grpc_service.proto`` (needs ``grpcio-tools``).

Run from anywhere: ``python -m modelhost.grpc.generate``. It writes ``grpc_service_pb2.py``,
``grpc_service_pb2.pyi`` and ``grpc_service_pb2_grpc.py`` beside the proto, then makes one edit
to ``grpc_service_pb2.py``: the file is added to a descriptor pool of its own instead of
protobuf's default pool. The messages live in the standard proto package ``inference`` (the
service must be ``inference.GRPCInferenceService`` for clients to find it), and so do
``tritonclient.grpc``'s; in the default pool the second of the two to be imported fails with
"duplicate symbol 'inference.ServerLiveRequest'". A private pool lets modelhost and tritonclient
share a process; the wire format is unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent
PROTO = "modelhost/grpc/grpc_service.proto"
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate() -> None:
    """Run protoc (from grpcio-tools) and patch the descriptor pool.

    Raises:
        SystemExit: protoc failed, or its output no longer has the line to patch.
    """
    from grpc_tools import protoc  # type: ignore[import-untyped]  # no stubs; dev-only

    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{SRC}",
            f"--python_out={SRC}",
            f"--pyi_out={SRC}",
            f"--grpc_python_out={SRC}",
            str(SRC / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    module = HERE / "grpc_service_pb2.py"
    text = module.read_text()
    if text.count(_DEFAULT_POOL) != 1:
        raise SystemExit(f"{module}: expected one {_DEFAULT_POOL!r} to patch")
    module.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL))
    print(f"regenerated stubs in {HERE}")


if __name__ == "__main__":
    generate()
    sys.exit(0)
