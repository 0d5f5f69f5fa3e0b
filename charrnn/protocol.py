"""Names both ends of the gRPC API agree on, beside the generated messages in `charrnn.v1`.

The server (`service/`) and the client (`charrnn.client`) import these instead of each keeping a copy.
"""

from __future__ import annotations

from collections.abc import Mapping

from charrnn.v1 import charrnn_pb2 as pb

# The trailer gRPC's own retry policy reads: how long to wait before retrying a refused call.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

# The largest sampling seed (the API's seed is a uint64); the server and the client CLI refuse a larger one.
MAX_SEED = 2**64 - 1

# Hidden-state kinds as the API names them: "h" (every cell) and "c" (the LSTM's cell state).
STATE_KINDS: dict[str, pb.StateKind.ValueType] = {"h": pb.STATE_KIND_H, "c": pb.STATE_KIND_C}

FINISH_REASONS: dict[str, pb.FinishReason.ValueType] = {
    "length": pb.FINISH_REASON_LENGTH,
    "stop": pb.FINISH_REASON_STOP,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}

CELL_TYPES: dict[str, pb.CellType.ValueType] = {
    "rnn": pb.CELL_TYPE_RNN,
    "lstm": pb.CELL_TYPE_LSTM,
    "gru": pb.CELL_TYPE_GRU,
}

# Keys: charrnn.artifact.PRECISIONS.
PRECISION_TYPES: dict[str, pb.Precision.ValueType] = {"fp32": pb.PRECISION_FP32, "int8": pb.PRECISION_INT8}

UNKNOWN_POLICIES: dict[str, pb.UnknownPolicy.ValueType] = {
    "refuse": pb.UNKNOWN_POLICY_REFUSE,
    "replace": pb.UNKNOWN_POLICY_REPLACE,
}


def name_of(table: Mapping[str, int], value: int, default: str = "unspecified") -> str:
    """The name a table gives `value` (the reverse lookup), or `default` for a value it lacks."""
    return next((name for name, v in table.items() if v == value), default)
