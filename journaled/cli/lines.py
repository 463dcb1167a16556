"""``submit --each-line``: one run per line, as plain text or as a JSON object.

Pure parsing, no I/O: ``parse_lines`` turns the file's bytes into the
batch, or raises ``LineError`` naming the first bad line, so the command
submits every run or none.

How a line is read (``--line-format``):

- ``auto`` (the default): a line whose first character other than spaces
  and tabs is ``{`` is a JSON object; any other line is the input itself,
  byte for byte (today's meaning).
- ``text``: every line is the input itself, even one starting with ``{``.
- ``json``: every line must be a JSON object.

Blank lines (only whitespace) are skipped in every format. A JSON line has
the keys ``input`` (text, sent as UTF-8) or ``input_b64`` (bytes, standard
base64), ``headers`` (an object of strings, over the ``-H`` ones) and
``run_id``; any other key is an error (a typo must not drop data). In
``auto`` mode a literal line that starts with ``{`` is sent as
``{"input": "{..."}``, or the whole file with ``--line-format text``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, NamedTuple

from ..errors import InputTooLarge, InvalidRunId
from ..inbox import check_headers, check_run_id

FORMATS = ("auto", "text", "json")
KEYS = ("input", "input_b64", "headers", "run_id")


class LineError(ValueError):
    """A bad line: ``line`` is its 1-based number in the file."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"--each-line line {line}: {message}")
        self.line = line


class LineItem(NamedTuple):
    input: bytes
    headers: dict[str, str]
    run_id: str | None
    line: int


def parse_lines(data: bytes, fmt: str = "auto", headers: dict[str, str] | None = None
                ) -> list[LineItem]:
    """The runs ``data`` describes, in order; ``headers`` are every run's (a line's win)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown line format {fmt!r}: use one of {', '.join(FORMATS)}")
    base = dict(headers or {})
    out: list[LineItem] = []
    for n, raw in enumerate(data.splitlines(), 1):
        ln = raw.rstrip(b"\r\n")
        if not ln.strip():
            continue
        if fmt == "text" or (fmt == "auto" and not ln.lstrip(b" \t").startswith(b"{")):
            out.append(LineItem(ln, base, None, n))
        else:
            out.append(_json_line(n, ln, base))
    return out


def _json_line(n: int, ln: bytes, base: dict[str, str]) -> LineItem:
    try:
        obj = json.loads(ln)
    except UnicodeDecodeError:
        raise LineError(n, "a JSON line must be UTF-8 (put bytes in \"input_b64\")") from None
    except json.JSONDecodeError as e:
        raise LineError(n, f"not valid JSON ({e.msg} at column {e.colno}); a literal line "
                           "starting with '{' needs --line-format text or "
                           "{\"input\": \"...\"}") from None
    if not isinstance(obj, dict):
        raise LineError(n, f"a JSON line must be an object, got {type(obj).__name__}")
    unknown = [k for k in obj if k not in KEYS]
    if unknown:
        raise LineError(n, f"unknown key {unknown[0]!r} (a line takes {', '.join(KEYS)})")
    if "input" in obj and "input_b64" in obj:
        raise LineError(n, "give \"input\" or \"input_b64\", not both")
    value = _input(n, obj)
    hdrs = obj.get("headers", {})
    try:
        line_headers = check_headers(hdrs)
    except (TypeError, InputTooLarge) as e:
        raise LineError(n, f"\"headers\": {e}") from None
    rid = obj.get("run_id")
    if rid is not None:
        if not isinstance(rid, str):
            raise LineError(n, f"\"run_id\" must be a string, got {type(rid).__name__}")
        try:
            check_run_id(rid)
        except InvalidRunId as e:
            raise LineError(n, str(e)) from None
    merged = {**base, **line_headers}
    try:
        check_headers(merged)
    except InputTooLarge as e:
        raise LineError(n, f"the -H headers with this line's: {e}") from None
    return LineItem(value, merged, rid, n)


def _input(n: int, obj: dict[str, Any]) -> bytes:
    if "input_b64" in obj:
        b64 = obj["input_b64"]
        if not isinstance(b64, str):
            raise LineError(n, f"\"input_b64\" must be a string, got {type(b64).__name__}")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise LineError(n, f"\"input_b64\" is not base64 ({e})") from None
    text = obj.get("input", "")
    if not isinstance(text, str):
        raise LineError(n, f"\"input\" must be a string, got {type(text).__name__} (bytes: "
                           "use \"input_b64\")")
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise LineError(n, "\"input\" is not valid Unicode text (use \"input_b64\")") from None
