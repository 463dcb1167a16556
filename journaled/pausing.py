"""Pause and resume dispatch, by key or for every run: the fold and the match (pure).

While a run matches a pause, no new step of it is leased: a running step
finishes, and the run keeps its place in the ready queue (the state puts
it back in line untouched), so a resume serves runs in the order they
would have gone. ``DispatchPaused`` records make pauses survive restarts;
a snapshot keeps them as a list of keys, ``"*"`` standing for all.
"""

from __future__ import annotations

from typing import Any

from .records import DispatchPaused, Record

ALL = "*"


def key_of(run: Any) -> str:
    """A run's concurrency key (``Submitted.key``; empty until the limits work lands)."""
    return getattr(run, "key", "") or ""


class Pauses:
    """The keys paused now; ``all`` pauses every run whatever its key."""

    __slots__ = ("all", "keys")

    def __init__(self) -> None:
        self.all = False
        self.keys: set[str] = set()

    def __bool__(self) -> bool:
        return self.all or bool(self.keys)

    def apply(self, rec: DispatchPaused) -> None:
        if rec.all:
            self.all = rec.paused
            if not rec.paused:
                self.keys.clear()  # resume --all resumes everything
        elif rec.paused:
            self.keys.add(rec.key)
        else:
            self.keys.discard(rec.key)

    def holds(self, run: Any) -> bool:
        """Whether ``run`` may not be leased now."""
        return self.all or (bool(self.keys) and key_of(run) in self.keys)

    def snapshot(self) -> list[str]:
        return ([ALL] if self.all else []) + sorted(self.keys)

    def restore(self, keys: list[str]) -> None:
        self.all = ALL in keys
        self.keys = {k for k in keys if k != ALL}

    def command(self, key: str | None, paused: bool, now: float) -> list[Record]:
        """The record for ``pause``/``resume`` (``key`` None: all); nothing if already so."""
        if key is None:
            if self.all == paused and (paused or not self.keys):
                return []
            return [DispatchPaused("", paused, now, True)]
        if (key in self.keys) == paused:
            return []
        return [DispatchPaused(key, paused, now)]

    def describe(self) -> dict[str, Any]:
        """For ``status --json`` and ``watch``."""
        return {"all": self.all, "keys": sorted(self.keys)}
