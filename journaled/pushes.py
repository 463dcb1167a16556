"""Ends pushed unasked (``Hello.ends``): held, framed with the next answer, taken back.

A mixin of ``server.DoorServer``, run under its pass lock. A push is held
per connection (``_hold``) and goes out in front of that connection's next
answer (``_held_frames``: one send, one wake-up of the client), as ``End``
to a client whose hello said ``lean``, else as ``Outcome`` with id
``PUSHED``. A redrive takes pushes back (``_revoke``) before its own answer
is sent, so no wait that starts after that answer reads the old end.
"""

from __future__ import annotations

from typing import Any, Protocol

from .api import RunOutcome
from .blobs import BlobRef
from .protocol import PUSHED, End, Revoke, frame, outcome_reply

# Pushed ends held for the next answer on their connection; past this many the
# newest are dropped (the client asks with ``Wait`` for those).
HELD_MAX = 512
# The connection id of a ``Revoke`` for every connection that may hold a push.
EVERY = 0


class _Conn(Protocol):
    cid: int
    sock: Any
    out: Any
    ends: bool
    lean: bool
    pushed: bool
    closing: bool
    held: list[RunOutcome]


class PushedEnds:
    """The server's pushes (a mixin): what it needs of the server is declared here."""

    _conns: dict[int, Any]
    _flush: Any
    _drop: Any

    @staticmethod
    def _hold(c: _Conn, out: RunOutcome) -> None:
        if len(c.held) < HELD_MAX:
            c.held.append(out)

    @staticmethod
    def _held_frames(c: _Conn) -> bytes:
        """The held pushes as frames, to go before the answer being written (one send)."""
        held, c.held = c.held, []
        c.pushed = True
        out = []
        lean = c.lean
        for o in held:
            try:
                out.append(frame(End.of(o) if lean and type(o.result) is not BlobRef else
                                 outcome_reply(PUSHED, o)))
            except ValueError:
                pass  # too big to push: the client asks with Wait
        return b"".join(out)

    def _revoke(self, cid: int, msg: Revoke) -> None:
        """Take back pushes of runs redriven since, before whatever is queued after it
        (the redrive's own answer) goes out.

        A push still held is dropped; one sent goes with a ``Revoke`` written now, whole.
        A connection that cannot take it whole now (answers it has not read fill its
        socket) is closed instead, as is a client from before ``Revoke``: either then
        asks anew on another connection. ``cid`` ``EVERY``: each connection that asked
        for ends (the supervisor no longer knows which one it pushed to).
        """
        if cid == EVERY:
            conns = [c for c in self._conns.values() if c.ends]
        else:
            one = self._conns.get(cid)
            conns = [one] if one is not None else []
        gone = set(msg.run_ids)
        for c in conns:
            if c.held:
                c.held = [o for o in c.held if o.run_id not in gone]
            if not c.pushed or c.closing:
                continue  # it holds no end of ours (closing: it gets the end of stream)
            if not c.lean:  # an older client, which reads no Revoke: it reconnects
                self._drop(c, None)
                continue
            if c.out:
                self._flush(c)
                if c.cid not in self._conns:
                    continue
            n = -1
            if not c.out:
                try:
                    data = frame(msg)
                    n = c.sock.send(data) - len(data)
                except (OSError, ValueError):  # BlockingIOError too: not whole
                    n = -1
            if n != 0:
                self._drop(c, "too far behind to be told of a redrive before it is answered")
