"""``journaled submit``'s way to the supervisor: the socket alone when one listens.

``Client`` is both halves of a client: it submits, and it folds the journal,
reads the archive (SQLite) and watches directories to answer reads. A
``journaled submit`` in a shell loop needs only the first half, and only over
the socket when a supervisor listens, so importing the rest at every start
cost more than the submission itself. ``Submitter`` does what
``Client.submit_many`` does on the socket path (same checks through
``submit_msgs``, same frame bound, one reconnect) and hands anything else
(no supervisor listening, a batch too big for a frame, a connection that
broke twice) to a full ``Client``: the inbox path, with the same answers,
errors and exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..blobs import BlobStore

if TYPE_CHECKING:
    from ..client import Client


class Submitter:
    """Submissions of one command: over the socket if it answers, else through ``Client``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.blobs = BlobStore(state_dir)
        self._client: Client | None = None
        self.served = False  # a supervisor took the submission over the socket
        self._sent = False  # a request went out on a connection (it may have taken)

    def client(self) -> Client:
        """The full client (the inbox path and every read), imported on first use."""
        if self._client is None:
            from ..client import Client

            self._client = Client(self.state_dir, use_socket=False)
        return self._client

    def submit(self, data: Any, headers: dict[str, str], run_id: str | None,
               **opts: Any) -> str:
        return self.submit_many([data], headers, [run_id] if run_id is not None else None,
                                **opts)[0]

    def submit_many(self, inputs: list[Any], headers: Any, run_ids: Sequence[str] | None,
                    **opts: Any) -> list[str]:
        """``Client.submit_many``'s answer: the ids once durable, or its errors."""
        from ..app import check_runner_name
        from ..serving import check_served_runner, served_limits
        from ..submission import submit_msgs

        runner, resources = opts.get("runner"), opts.get("resources")
        if runner:
            check_served_runner(self.state_dir, check_runner_name(runner))
        # The supervisor's limits matter only to a run asking for resources.
        items, ids = submit_msgs(inputs, headers, run_ids, opts.get("priority", 0),
                                 opts.get("max_attempts", 0), opts.get("step_timeout", 0.0),
                                 self.blobs, runner, resources=resources, key=opts.get("key"),
                                 limits=served_limits(self.state_dir) if resources else None)
        if items and self._over_socket(items, made_here=run_ids is None):
            self.served = True
            return ids
        if self._sent:
            # The request may have taken before the connection broke: the inbox gets
            # the same ids, and with ids given the client skips what is already there.
            run_ids = ids
        return self.client().submit_many(inputs, headers, run_ids, **opts)

    def _over_socket(self, items: list[Any], made_here: bool) -> bool:
        """Whether the supervisor answered ``Submit(items)`` (durable in the journal).

        ``made_here``: every id was made for this call, so the first try may say
        ``fresh`` (no archive look-up on the supervisor's side); a resend may find
        its first try taken, so it never does.
        """
        from ..connection import DoorConnection, DoorLost
        from ..errors import RunNotFound
        from ..submission import fits_a_frame, fresh_submit

        if not fits_a_frame(items):
            return False
        make = fresh_submit(items, made_here and not self._sent)
        for _ in (1, 2):  # reconnect once: a supervisor may have restarted
            conn = DoorConnection.open(self.state_dir)
            if conn is None:
                return False
            try:
                self._sent = True
                conn.call(make)
                return True
            except DoorLost:
                continue
            except RunNotFound:
                return False
            finally:
                conn.close()
        return False

    def never_served(self) -> bool:
        """True when no supervisor has ever run on this state directory (no journal yet)."""
        return not self.served and self.client().never_served()
