"""The one reader of journal records: frames decoded, every failure named by segment and offset.

Everyone who reads records goes through here: the supervisor's replay, a
``Client`` (through ``Tail``), ``verify``/``log``/``compact`` and
``journaled step``, and crashtest. So a frame whose CRC passes but whose
body does not decode is the same ``JournalCorrupt(segment, offset, what)``
for all of them, never a raw msgspec traceback.

- ``records(journal_dir)``: every record from the replay start, read-only
  (creates nothing, takes no lock); a torn tail ends it quietly.
- ``records(journal)``: the same through a writer's ``Journal.replay()``,
  so ``journal.open_for_append()`` can follow.
- ``fold(journal_dir)``: the ``State`` those records make.
- ``Tail(journal_dir).poll()``: records made durable since the last poll,
  from another process (stops at the synced mark).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import JournalCorrupt
from .journal import Journal, JournalTailer
from .journal.segment import Scan, scan
from .records import Record, decode
from .state import State

__all__ = ["Entry", "decode_at", "decode_all", "records", "fold", "apply_all", "Tail"]

Entry = tuple[str, int, Record]  # (segment name, file offset of the frame, record)


def decode_at(segment: str, offset: int, body: bytes | memoryview) -> Record:
    """Decode one body; any failure is ``JournalCorrupt`` at its segment and offset."""
    try:
        return decode(body)
    except Exception as e:  # noqa: BLE001 - a body that passed its CRC must decode
        raise JournalCorrupt(segment, offset, f"undecodable record ({e})") from None


def decode_all(frames: Iterable[tuple[str, int, bytes]]) -> Iterator[Entry]:
    """Decode ``(segment, offset, body)`` frames, naming the place of any that fails."""
    for seg, off, body in frames:
        try:
            rec = decode(body)
        except Exception as e:  # noqa: BLE001 - a body that passed its CRC must decode
            raise JournalCorrupt(seg, off, f"undecodable record ({e})") from None
        yield seg, off, rec


def records(source: Path | str | Journal) -> Iterator[Entry]:
    """``(segment, offset, record)`` for every record from the replay start, oldest first.

    ``source`` is a journal directory (read-only: nothing is created, no
    lock is taken) or a writer's ``Journal`` (its ``replay()``, so that
    ``open_for_append()`` may follow; ``journal.torn`` says what was cut short).

    Raises:
        JournalCorrupt: damage, or a record that does not decode.
    """
    if isinstance(source, Journal):
        return decode_all(source.replay())
    return decode_all(scan(Path(source), Scan()))


def apply_all(state: State, entries: Iterable[Entry]) -> State:
    """Fold ``entries`` into ``state`` with the cyclic collector paused.

    Records and runs hold no reference cycles: the collector would only
    rescan the growing state again and again (a third of replay time).
    """
    apply = state.apply
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _seg, _off, rec in entries:
            apply(rec)
    finally:
        if gc_was_on:
            gc.enable()
    return state


def fold(source: Path | str | Journal, state: State | None = None) -> State:
    """The ``State`` the journal's records make (a fresh ``State()`` unless given)."""
    return apply_all(State() if state is None else state, records(source))


class Tail:
    """Records appended by another process, only once they are durable (see ``JournalTailer``)."""

    def __init__(self, journal_dir: Path | str) -> None:
        self.tailer = JournalTailer(journal_dir)

    def poll(self) -> tuple[bool, list[Entry]]:
        """``(reset, entries)``: ``reset`` means start over, the journal was compacted.

        Raises:
            JournalCorrupt: damage, or a record that does not decode.
        """
        reset, frames = self.tailer.poll_frames()
        return reset, list(decode_all(frames))
