"""The errors journaled raises on purpose; anything else is a bug.

Every class builds its own message from its facts, and each docstring
says whether retrying can help. The CLI prints ``str(err)`` on one line.
"""

from __future__ import annotations


class JournaledError(Exception):
    """Root of every error journaled raises on purpose."""


class RunNotFound(JournaledError):
    """Permanent: no run with this id is known to the state directory."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"no run {run_id!r} in this state directory; 'journaled runs' lists the known ones"
        )


class RunConflict(JournaledError):
    """Permanent: the run id is taken by a submission with other input."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run id {run_id!r} was already submitted with different input or headers; "
            "pick a fresh run id"
        )


class InvalidRunId(JournaledError):
    """Permanent: the id breaks the 1-128 chars of [A-Za-z0-9._:@~-] rule."""

    def __init__(self, run_id: object) -> None:
        self.run_id = run_id
        super().__init__(
            f"invalid run id {run_id!r}: use 1-128 characters of letters, digits and . _ : @ ~ -"
        )


class JournalCorrupt(JournaledError):
    """Permanent until repaired: a frame that is not a torn tail is damaged."""

    def __init__(self, segment: str, offset: int, what: str) -> None:
        self.segment = segment
        self.offset = offset
        self.what = what
        super().__init__(
            f"journal damaged: {segment} at byte {offset}: {what}; run 'journaled verify' "
            "to see it, 'journaled repair' to cut it off (a backup is kept)"
        )


class StateLocked(JournaledError):
    """Retry later: another supervisor holds the state directory's lock."""

    def __init__(self, state_dir: str, holder: str = "") -> None:
        self.state_dir = state_dir
        who = f" (pid {holder})" if holder else ""
        super().__init__(
            f"state directory {state_dir} is locked by another supervisor{who}; "
            "stop it first or use another --state"
        )


class StorageFailure(JournaledError):
    """Permanent for this process: a write or fsync failed, so nothing after it is trusted.

    After a failed fsync the page cache cannot be trusted (the "fsyncgate"
    lesson), so the supervisor stops instead of retrying; a restart replays
    what is really on disk.
    """

    def __init__(self, op: str, path: str, err: OSError) -> None:
        self.op = op
        self.path = path
        self.errno = err.errno
        super().__init__(
            f"storage failure: {op} on {path} failed ({err.strerror or err}); "
            "stopping without acknowledging anything not yet durable; fix the disk and restart"
        )


class RunNotTerminal(JournaledError):
    """Retry later: the run has no result yet."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(
            f"run {run_id!r} is {status}, it has no result yet; "
            f"'journaled wait {run_id}' blocks until it ends"
        )


class RunNotLive(JournaledError):
    """Permanent: the run has ended, so it takes no more signals."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} already {status}; signals only reach live runs")


class InputTooLarge(JournaledError):
    """Permanent: a value is over the size the journal can hold inline.

    Refused at the API, before anything is acknowledged, so an oversized
    value can never reach the supervisor and crash it (see ``limits``).
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what}: {size:,} bytes, over the {limit:,}-byte limit; "
            "store big data in a file and pass its path"
        )


class SubmissionRejected(JournaledError):
    """Permanent: the supervisor refused a submission that a client had posted.

    The run never existed; ``reason`` says why (for example another client
    took the same run id with other input first).
    """

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"submission of run {run_id!r} was rejected: {reason}")


class RecordTooLarge(JournaledError, ValueError):
    """Permanent: a journal record body is empty or over ``MAX_BODY``; nothing was written.

    Raised by ``Journal.append`` and ``Journal.compact`` before any byte
    reaches the disk, so the journal stays usable (a ``ValueError`` too,
    for callers that checked for that).
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"a journal record of {size:,} bytes does not fit one frame (1 to {limit:,} bytes); "
            "nothing was written"
        )


class RunNotDead(JournaledError):
    """Permanent: ``retry`` redrives dead-lettered steps only, and this run has none."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} has no dead-lettered step (it is {status}); "
                         "'journaled dead' lists those that do")


class BlobMissing(JournaledError):
    """Permanent until restored: a record names a blob that is missing or not whole.

    Blobs are written durably before any record names them, so this means
    the file was deleted or damaged outside journaled ('journaled verify'
    lists every such blob).
    """

    def __init__(self, sha256: str, size: int, path: str, why: str) -> None:
        self.sha256 = sha256
        self.size = size
        self.path = path
        super().__init__(f"blob {sha256} ({size:,} bytes) is missing or damaged at {path}: "
                         f"{why}")


class UnknownRunner(JournaledError, ValueError):
    """Permanent: the run names a runner this supervisor does not serve.

    Refused at submit (by the client, from ``STATE/serving.json``, and again
    by the supervisor when it takes the submission up).
    """

    def __init__(self, runner: str, served: list[str] | str) -> None:
        self.runner = runner
        self.served = served if isinstance(served, str) else ", ".join(served)
        super().__init__(f"unknown runner {runner!r}: this supervisor serves "
                         f"{self.served or 'no named runners'}")


class OverLimit(JournaledError, ValueError):
    """Permanent: a run asks for more of a resource than the supervisor's ``--limit`` allows.

    Refused at submit (by the client when ``STATE/serving.json`` is there,
    and by the supervisor when it takes the submission), because such a run
    could never be leased.
    """

    def __init__(self, run_id: str, why: str) -> None:
        self.run_id = run_id
        self.why = why
        super().__init__(f"run {run_id!r} asks for {why}: it could never run; ask for less "
                         "or restart the supervisor with a higher --limit")


class CronUnavailable(JournaledError):
    """Permanent until installed: schedules need ``croniter`` (the ``schedules`` extra)."""

    def __init__(self) -> None:
        super().__init__("schedules need the croniter package: pip install "
                         "'journaled[schedules]'  (or: pip install croniter)")


class ScheduleNotFound(JournaledError):
    """Permanent: no schedule has this name ('journaled schedule list' shows them)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r} ('journaled schedule list' shows them)")
