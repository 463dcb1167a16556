"""Issue 11 item 4, journal part: an oversized body in a compaction is a clear error, not a crash.

``Journal.compact`` used to frame the snapshot outside its error handling,
so a part over ``MAX_BODY`` escaped as a bare ``ValueError`` and killed the
supervisor. It now raises ``RecordTooLarge`` (a ``JournaledError`` and a
``ValueError``) before touching any file; the old journal stays in use.
"""

from __future__ import annotations

import pytest

from journaled import limits
from journaled.errors import JournaledError, RecordTooLarge
from journaled.journal import MAX_BODY, Journal, list_segments


@pytest.mark.timeout(60)
def test_compaction_with_a_part_over_max_body_raises_record_too_large_and_keeps_the_journal(
        tmp_path):
    assert limits.MAX_BODY == MAX_BODY, "one limit, defined by the journal"
    j = Journal(tmp_path, unsafe_no_fsync=True)
    list(j.replay())
    j.open_for_append()
    j.extend([b"kept-1", b"kept-2"])
    j.commit()
    before = {p.name: p.read_bytes() for p in list_segments(tmp_path)}
    with pytest.raises(RecordTooLarge) as exc:
        j.compact([b"small part", b"x" * (MAX_BODY + 1)])
    assert isinstance(exc.value, JournaledError) and isinstance(exc.value, ValueError)
    assert f"{MAX_BODY + 1:,} bytes" in str(exc.value)
    assert {p.name: p.read_bytes() for p in list_segments(tmp_path)} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp file left"
    j.append(b"after the refused compaction")  # the journal is not failed
    j.commit()
    with pytest.raises(RecordTooLarge):
        j.append(b"")
    j.close()
    got = [bytes(b) for _, _, b in Journal(tmp_path).replay()]
    assert got == [b"kept-1", b"kept-2", b"after the refused compaction"]
