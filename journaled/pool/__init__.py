"""Worker processes, the pipes to them, and the shared cancel block.

``worker`` is everything a worker process imports; ``pool`` is the
supervisor side; ``wire`` the messages both exchange. Every name other
modules imported from the old ``journaled.pool`` module is re-exported here.
"""

from __future__ import annotations

from .pool import (
    DEPTH_BYTES,
    Feeder,
    InFlight,
    Pool,
    Sender,
    Worker,
    WorkerChannels,
    fault_tail,
    read_results,
)
from .wire import (
    BATCH_BYTES,
    CancelQueued,
    Dispatch,
    DispatchBatch,
    FromWorker,
    MemoAck,
    MemoPutMsg,
    Ready,
    ResultBatch,
    Revoke,
    Revoked,
    Stop,
    ToWorker,
    from_worker_dec,
    to_worker_dec,
    to_worker_enc,
)
from .worker import (
    load_import_string,
    resolve_runner,
    resolve_runners,
    run_one,
    to_result,
    worker_main,
)

# Old private names some executors used.
_to_worker_dec = to_worker_dec
_to_worker_enc = to_worker_enc
_from_worker_dec = from_worker_dec

__all__ = [
    "BATCH_BYTES", "DEPTH_BYTES", "CancelQueued", "Dispatch", "DispatchBatch", "Feeder",
    "FromWorker", "InFlight", "MemoAck", "MemoPutMsg", "Pool", "Ready", "ResultBatch", "Revoke",
    "Revoked", "Sender", "Stop", "ToWorker", "Worker", "WorkerChannels", "fault_tail",
    "from_worker_dec", "load_import_string", "read_results", "resolve_runner", "resolve_runners",
    "run_one",
    "to_result", "to_worker_dec", "to_worker_enc", "worker_main",
]
