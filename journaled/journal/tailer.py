"""Follow a journal written by another process; never past what is durable.

Which bytes a tailer may hand out:

- A live writer holds the state lock and published the mark (the mark's pid
  is the lock holder's): frames up to the mark, nothing after it. Segments
  newer than the mark's are invisible, so a compaction shows up only once
  its snapshot is published (the old segments stay until after that).
- Otherwise (no live holder, or a holder that has not published yet: it
  is replaying, or is an older version): every whole frame on disk is what
  the next replay will fold, because a writer zeroes the mark before it
  cuts anything. The tailer makes those bytes durable itself with an
  ``fdatasync`` of the newest segment *after* reading them and before
  handing them out, so a power cut cannot take them back either.
"""

from __future__ import annotations

import os
from pathlib import Path

from journaled.errors import JournalCorrupt

from .frame import HEADER_SIZE, FrameReader
from .lock import StateLock
from .mark import SyncedMark, read_mark
from .segment import FLAG_BASE, check_header, list_segments, read_head, segment_name, segment_num

__all__ = ["JournalTailer"]

Frame = tuple[str, int, bytes]


class JournalTailer:
    """Follow a journal written by another process, reading only what is new and durable.

    Never locks. A frame still being written at the end of the newest segment
    is left for the next poll. When compaction replaces the segment being read
    (it vanished, or a newer BASE segment appeared), the tailer starts again
    from the newest BASE segment and says so with ``reset=True``.

    Args:
        journal_dir: ``STATE/journal``; the lock is looked for in its parent.
    """

    def __init__(self, journal_dir: Path | str) -> None:
        self.journal_dir = Path(journal_dir)
        self.state_dir = self.journal_dir.parent
        self._seg: int | None = None  # segment being read
        self._off = 0  # next byte to read in it; 0 means the header is still unread
        self._base: int | None = None
        self._flags: dict[int, int] = {}  # header flags of segments seen whole
        self.mark: SyncedMark | None = None  # the mark the last poll stopped at (None: disk)

    def poll(self) -> tuple[bool, list[bytes]]:
        """Return ``(reset, bodies)``: records made durable since the last poll.

        ``reset`` True means the journal was compacted (or repaired) under us:
        forget what earlier polls returned, ``bodies`` holds all records from
        the newest BASE segment on.

        Raises:
            JournalCorrupt: damage before the newest segment's end.
        """
        reset, frames = self.poll_frames()
        return reset, [body for _, _, body in frames]

    def poll_frames(self) -> tuple[bool, list[Frame]]:
        """Like ``poll``, with each body's segment name and file offset."""
        reset = False
        out: list[Frame] = []
        while True:
            mark = self._trusted_mark()
            self.mark = mark
            nums = [segment_num(p) for p in list_segments(self.journal_dir)]
            if mark is not None:
                nums = [n for n in nums if n <= mark.segment]
            if not nums:
                if self._seg is not None and mark is None:
                    self._seg, self._off, self._base = None, 0, None
                    return True, []
                return False, []
            try:
                base = self._newest_base(nums)
                if self._seg is None:
                    self._seg, self._off, self._base = base, 0, base
                elif self._seg not in nums or base != self._base:
                    self._seg, self._off, self._base = base, 0, base
                    out.clear()
                    reset = True
                self._read_forward(nums, mark, out)
            except FileNotFoundError:
                continue  # compaction deleted a segment under us: list again
            return reset, out

    def _trusted_mark(self) -> SyncedMark | None:
        """The mark, if the live lock holder published it; None: read the disk (and sync)."""
        mark = read_mark(self.journal_dir)
        if mark is None:
            return None
        try:
            holder = StateLock.holder(self.state_dir)
        except OSError:  # the lock file is not ours to read: sync and read the disk
            return None
        if holder is None or holder != mark.pid:
            return None
        return mark

    def _newest_base(self, nums: list[int]) -> int:
        self._flags = {n: f for n, f in self._flags.items() if n in nums}
        for i in range(len(nums) - 1, -1, -1):
            num = nums[i]
            flags = self._flags.get(num)
            if flags is None:
                name = segment_name(num)
                flags = check_header(
                    read_head(self.journal_dir / name), name, i == len(nums) - 1
                )
                if flags is None:
                    continue
                self._flags[num] = flags
            if flags & FLAG_BASE:
                return num
        return nums[0]

    def _read_forward(self, nums: list[int], mark: SyncedMark | None, out: list[Frame]) -> None:
        assert self._seg is not None
        i = nums.index(self._seg)
        while True:
            seg = nums[i]
            is_last = i == len(nums) - 1
            name = segment_name(seg)
            # Listing before reading matters: a segment seen with a successor
            # was complete before the successor was created.
            with open(self.journal_dir / name, "rb") as f:
                f.seek(self._off)
                may_be_torn = is_last
                if mark is not None and seg == mark.segment:
                    want = max(mark.offset - self._off, 0)
                    data = f.read(want)
                    # Every byte before the mark was synced: a bad frame there is damage.
                    may_be_torn = len(data) < want
                else:
                    data = f.read()
                start = 0
                if self._off == 0:
                    if check_header(data, name, is_last) is None:
                        return  # being created; next poll
                    start = HEADER_SIZE
                reader = FrameReader(data, name, start, may_be_torn, base=self._off)
                got = [(name, off, body) for off, body in reader]
                if got and mark is None and is_last:
                    # No trusted mark: make what we read durable before anyone
                    # sees it. Bytes read before this call are synced by it.
                    try:
                        os.fdatasync(f.fileno())
                    except OSError:
                        return  # not provably durable: hand out nothing new
            out.extend(got)
            self._off = reader.last_good_offset
            if is_last or reader.end == "torn":
                return
            nxt = nums[i + 1]
            if nxt != seg + 1:
                raise JournalCorrupt(
                    segment_name(nxt), 0,
                    f"segment {segment_name(seg + 1)} is missing between {name} and "
                    f"{segment_name(nxt)}",
                )
            i += 1
            self._seg, self._off = nxt, 0
