"""What runs inside the supervisor and its workers under crashtest, and the log they write.

Every worker and the terminal hook append one line per event to the exec
log (``O_APPEND``, one ``write`` per line, so lines of many processes never
interleave)::

    exec <run_id> <step> <attempt> <pid>     a worker is about to run a step
    term <run_id> <status> <result-hex>      on_terminal reported an outcome

With ``--payload-bytes N`` the wrapper carries N bytes of padding in every
``Continue`` payload and checks them on the next step: the padding is a
function of the run and the step, so a payload lost, cut or handed to the
wrong run turns into a ``Fail`` whose outcome differs from the reference.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

ENV_APP = "JOURNALED_CRASHTEST_APP"
ENV_LOG = "JOURNALED_CRASHTEST_LOG"
ENV_PAYLOAD = "JOURNALED_CRASHTEST_PAYLOAD_BYTES"
WRAPPED = "journaled.crashtest:wrapped_runner"
HOOK = "journaled.crashtest:record_terminal"

_real_runner: Callable[[Any], Any] | None = None
_log_fd = -1
_log_pid = -1


def _append(line: str) -> None:
    """One ``write`` with O_APPEND: lines from many processes never interleave."""
    global _log_fd, _log_pid
    if _log_fd < 0 or _log_pid != os.getpid():
        path = os.environ.get(ENV_LOG)
        if not path:
            raise RuntimeError(f"{ENV_LOG} is not set; wrapped_runner and record_terminal "
                               "are run by 'journaled crashtest', not by hand")
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _log_pid = os.getpid()
    os.write(_log_fd, line.encode())


def padding(run_id: str, step: int, n: int) -> bytes:
    """``n`` bytes that only this run's step can have produced."""
    if n <= 0:
        return b""
    seed = hashlib.sha256(f"{run_id}:{step}".encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


def _pad(result: Any, run_id: str, step: int, n: int) -> Any:
    from ..api import Continue, ContinueAfter, ContinueOnSignal

    if isinstance(result, (Continue, ContinueAfter, ContinueOnSignal)):
        import msgspec

        return msgspec.structs.replace(result, payload=result.payload
                                       + padding(run_id, step, n))
    return result


def wrapped_runner(step: Any) -> Any:
    """Runs in a worker: log ``exec run step attempt pid``, then call the user's runner.

    The user's runner (``$JOURNALED_CRASHTEST_APP``) is imported once per
    worker, before the first line is written; the line is written (no
    buffering) before the runner starts, so a step that ran at all is in
    the log even if its worker dies in it.
    """
    global _real_runner
    if _real_runner is None:
        from ..pool.worker import resolve_runners

        spec = os.environ.get(ENV_APP)
        if not spec:
            raise RuntimeError(f"{ENV_APP} is not set; wrapped_runner is run by "
                               "'journaled crashtest', not by hand")
        table = resolve_runners(spec)  # one runner, or an App's (crashtest --runner NAME)
        # Served under the name given to --runner (else as "wrapped_runner"): the
        # user's runner of that name, or the app's default one.
        _real_runner = table.get(step.runner if step.runner in table.runners else "")
    _append(f"exec {step.run_id} {step.step_number} {step.attempts} {os.getpid()}\n")
    n = int(os.environ.get(ENV_PAYLOAD, "0") or 0)
    if n <= 0:
        return _real_runner(step)
    if step.step_number > 0:
        want = padding(step.run_id, step.step_number - 1, n)
        if len(step.payload) < n or step.payload[-n:] != want:
            from ..api import Fail

            return Fail(f"crashtest: step {step.step_number} got a payload without the "
                        f"{n} bytes step {step.step_number - 1} of this run sent")
        step.payload = step.payload[:-n]
    return _pad(_real_runner(step), step.run_id, step.step_number, n)


def record_terminal(outcome: Any) -> None:
    """The on_terminal hook (in the supervisor): log ``term run status result-hex``."""
    result = "-" if outcome.result is None else outcome.result.hex()
    _append(f"term {outcome.run_id} {outcome.status.value} {result}\n")


class Line(NamedTuple):
    """One exec-log line; ``index`` is its position in the file (time order)."""

    index: int
    kind: str  # "exec" or "term"
    run_id: str
    step: int = -1
    attempt: int = -1
    pid: int = -1
    status: str = ""
    result: bytes | None = None


class ExecLog:
    """Incremental reader of the exec log; a line without its newline is not read yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[Line] = []
        self._off = 0
        self.last_exec_by_pid: dict[int, Line] = {}

    def poll(self) -> list[Line]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._off += end
        new = []
        for raw in data[:end].decode("utf-8", "replace").splitlines():
            line = self._parse(len(self.lines) + len(new), raw)
            if line is not None:
                new.append(line)
                if line.kind == "exec":
                    self.last_exec_by_pid[line.pid] = line
        self.lines += new
        return new

    @staticmethod
    def _parse(index: int, raw: str) -> Line | None:
        parts = raw.split(" ")
        try:
            if parts[0] == "exec" and len(parts) == 5:
                return Line(index, "exec", parts[1], int(parts[2]), int(parts[3]), int(parts[4]))
            if parts[0] == "term" and len(parts) == 4:
                result = None if parts[3] == "-" else bytes.fromhex(parts[3])
                return Line(index, "term", parts[1], status=parts[2], result=result)
        except ValueError:
            pass
        return None
