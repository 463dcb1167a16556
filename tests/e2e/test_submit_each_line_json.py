"""``journaled submit --each-line``: JSON lines carry input and headers; a bad line submits nothing.

The parsing rules (``journaled.cli.lines``) are checked directly; the command
itself runs as a real subprocess against a state directory, its runs read
back from the inbox and, once, run by ``journaled run --until-idle``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from journaled.cli.lines import LineError, parse_lines
from journaled.inbox import pending_submissions

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNALED_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "journaled.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(10)
def test_how_a_line_is_read_in_each_format() -> None:
    raw = base64.b64encode(b"\x00\xffbin").decode()
    data = (b"plain text\n"
            b"   \n"  # blank: skipped, still counted for line numbers
            b'  {"input": "caf\\u00e9", "headers": {"k": "line"}, "run_id": "r-1"}\n'
            b'{"input_b64": "' + raw.encode() + b'"}\r\n'
            b"{}\n")
    items = parse_lines(data, "auto", {"k": "cli", "other": "x"})
    assert [(i.input, i.headers, i.run_id, i.line) for i in items] == [
        (b"plain text", {"k": "cli", "other": "x"}, None, 1),
        ("café".encode(), {"k": "line", "other": "x"}, "r-1", 3),  # the line's header wins
        (b"\x00\xffbin", {"k": "cli", "other": "x"}, None, 4),
        (b"", {"k": "cli", "other": "x"}, None, 5),
    ]
    # text: every line verbatim, even one that looks like JSON
    assert [i.input for i in parse_lines(b'{"input": "x"}\n{oops\n', "text")] == [
        b'{"input": "x"}', b"{oops"]
    # json: a plain line is an error
    with pytest.raises(LineError, match="line 2: not valid JSON"):
        parse_lines(b'{"input": "a"}\nplain\n', "json")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("line", "words"), [
    (b"{oops", "not valid JSON"),
    (b'{"input": "a", "input_b64": "YQ=="}', "not both"),
    (b'{"inptu": "a"}', "unknown key 'inptu'"),
    (b'{"input": 5}', '"input" must be a string'),
    (b'{"input_b64": "***"}', "not base64"),
    (b'{"headers": {"k": 1}}', '"headers"'),
    (b'{"run_id": "bad id!"}', "run id"),
    (b'{"run_id": 7}', '"run_id" must be a string'),
    (b"{\"input\": \"\xff\"}", "UTF-8"),
])
def test_a_bad_json_line_is_named_by_its_number(line: bytes, words: str) -> None:
    with pytest.raises(LineError) as e:
        parse_lines(b"fine\n\n" + line + b"\n")
    assert e.value.line == 3
    assert str(e.value).startswith("--each-line line 3: ") and words in str(e.value), e.value


@pytest.mark.timeout(60)
def test_submit_each_line_json_then_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lines = tmp_path / "runs.jsonl"
    lines.write_text("\n".join([
        json.dumps({"input": "ann", "headers": {"lang": "fr"}, "run_id": "ann"}),
        "bob",
        json.dumps({"input_b64": base64.b64encode(b"cy").decode(), "run_id": "cy"}),
    ]) + "\n")
    out = _cli("submit", "--state", str(state), "--each-line", str(lines), "-H",
               "greeting=hi", "--json")
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)["run_ids"]
    assert ids[0] == "ann" and ids[2] == "cy" and ids[1] not in ("ann", "cy")
    queued = pending_submissions(state)
    assert {rid: (m.input, m.headers) for rid, m in queued.items()} == {
        "ann": (b"ann", {"greeting": "hi", "lang": "fr"}),
        ids[1]: (b"bob", {"greeting": "hi"}),
        "cy": (b"cy", {"greeting": "hi"}),
    }
    ran = _cli("run", "tests.apps.header_app:runner", "--state", str(state), "-w", "1",
               "--until-idle")
    assert ran.returncode == 0, ran.stderr
    res = _cli("result", "ann", "--state", str(state))
    assert res.stdout.strip() == "hi, ann (fr)", res.stdout + res.stderr


@pytest.mark.timeout(60)
def test_a_file_with_one_bad_line_submits_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lines = tmp_path / "runs.txt"
    lines.write_text('good one\n{"input": "two"}\n{"input": "three",}\nfour\n')
    out = _cli("submit", "--state", str(state), "--each-line", str(lines))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        out.stderr.strip()]  # one line, no traceback
    assert "--each-line line 3: not valid JSON" in out.stderr, out.stderr
    assert pending_submissions(state) == {}
    # The same file read as text: four runs, the JSON-looking lines verbatim.
    ok = _cli("submit", "--state", str(state), "--each-line", str(lines), "--line-format",
              "text", "--json")
    assert ok.returncode == 0, ok.stderr
    assert sorted(m.input for m in pending_submissions(state).values()) == sorted(
        [b"good one", b'{"input": "two"}', b'{"input": "three",}', b"four"])
    alone = _cli("submit", "x", "--state", str(state), "--line-format", "json")
    assert alone.returncode == 2 and "--line-format is for --each-line" in alone.stderr
