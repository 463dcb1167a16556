"""Where two values first differ, shown so a user can see it (a crashtest mismatch).

Two results that share their first 40 bytes print as the same prefix twice;
what a user needs is the offset of the first difference and both values
around it, as bytes (repr) and as hex, with the differing byte marked.
Pure functions, no I/O.
"""

from __future__ import annotations

CONTEXT = 32  # bytes shown on each side of the first difference


def first_difference(a: bytes, b: bytes) -> int | None:
    """The offset of the first byte where ``a`` and ``b`` differ (the shorter's length
    if one is a prefix of the other); None if they are equal."""
    if a == b:
        return None
    n = min(len(a), len(b))
    # Compare in halving blocks: a long equal prefix is found without a byte loop.
    lo, hi = 0, n
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return n


def _hex(data: bytes, start: int, at: int) -> str:
    """Hex bytes with the one at offset ``at`` in brackets."""
    return " ".join(f"[{x:02x}]" if start + i == at else f"{x:02x}" for i, x in enumerate(data))


def _as_bytes(v: bytes | str) -> bytes:
    return v.encode(errors="surrogatepass") if isinstance(v, str) else bytes(v)


def describe(what: str, got: bytes | str | None, ref: bytes | str | None,
             context: int = CONTEXT, got_name: str = "got", ref_name: str = "reference") -> str:
    """One paragraph: where ``got`` first differs from ``ref`` and both around it ('' if equal)."""
    if got == ref:
        return ""
    if got is None or ref is None:
        missing = got_name if got is None else ref_name
        other = ref if got is None else got
        assert other is not None
        return f"{what}: {missing} has none, the other has {len(_as_bytes(other)):,} bytes"
    a, b = _as_bytes(got), _as_bytes(ref)
    at = first_difference(a, b)
    assert at is not None
    lo = max(0, at - context)
    w = max(len(got_name), len(ref_name)) + 1
    last = min(max(len(a), len(b)), at + context) - 1
    lines = [f"{what} first differs at byte {at:,} ({got_name} {len(a):,} bytes, {ref_name} "
             f"{len(b):,} bytes); bytes {lo:,} to {last:,} of each:"]
    for name, data in ((got_name, a), (ref_name, b)):
        part = data[lo:at + context]
        shown = repr(part) if part else "(ends before it)"
        lines.append(f"  {name + ':':<{w}} {shown}")
        if part:
            lines.append(f"  {'':<{w}} hex {_hex(part, lo, at)}")
    return "\n".join(lines)
