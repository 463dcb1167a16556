"""The socket's wire format: what older and newer peers send still decodes the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from journaled.api import RunOutcome, RunStatus
from journaled.client import Client, fresh_submit
from journaled.door import check_submit
from journaled.inbox import SubmitMsg, check_message, pending_submissions
from journaled.protocol import (
    End,
    Hello,
    Outcome,
    Put,
    Submit,
    Welcome,
    frame,
    reply_decoder,
    request_decoder,
)


def _item(rid: str) -> SubmitMsg:
    return SubmitMsg(rid, b"x", 1.0)


def test_a_submit_without_fresh_from_an_older_client_decodes_as_not_fresh() -> None:
    old = msgspec.msgpack.encode(["submit", 7, [_item("r-1")]])  # version 1 before `fresh`
    req = request_decoder.decode(old)
    assert type(req) is Submit and req.id == 7 and req.fresh is False
    assert req.items[0].run_id == "r-1"


def test_lean_is_said_in_trailing_fields_older_peers_ignore() -> None:
    old_hello = request_decoder.decode(msgspec.msgpack.encode(["hello", 1, 5, True]))
    assert type(old_hello) is Hello and old_hello.ends and not old_hello.lean

    class OldWelcome(msgspec.Struct, tag="welcome", array_like=True):
        version: int
        pid: int

    assert msgspec.msgpack.decode(frame(Welcome(1, 9, True))[4:], type=OldWelcome).pid == 9
    put = Put(3, "r-1", b"x", 2.5)
    assert request_decoder.decode(frame(put)[4:]) == put


def test_an_end_says_what_the_outcome_it_stands_for_says() -> None:
    out = RunOutcome("r-1", RunStatus.FAILED, None, "boom", 2, 1.0, 3.5)
    end = reply_decoder.decode(frame(End.of(out))[4:])
    assert type(end) is End and end.value() == out == Outcome(0, out).value()


def test_only_the_first_try_of_ids_made_here_is_fresh() -> None:
    items = [_item("r-1")]
    make = fresh_submit(items, True)
    first, resend = make(1), make(2)
    assert (first.fresh, resend.fresh) == (True, False)  # a resend may find it archived
    assert fresh_submit(items, False)(3).fresh is False  # the caller's ids: always looked up
    assert request_decoder.decode(frame(first)[4:]) == first


def _refusal(check: Any, m: SubmitMsg) -> str | None:
    try:
        check(m)
    except Exception as e:  # noqa: BLE001 - compared by class and message
        return f"{type(e).__name__}: {e}"
    return None


@pytest.mark.parametrize("m", [
    SubmitMsg("r-1", b"x", 1.0),
    SubmitMsg("", b"x", 1.0),
    SubmitMsg("bad id!", b"x", 1.0),
    SubmitMsg("r" * 129, b"", 1.0),
    SubmitMsg("r-2", b"x", 1.0, {"k": "v"}, 3, 2, 1.5, "", {"gpu": 1.0}, "tenant"),
    SubmitMsg("r-3", b"x", 1.0, priority=1 << 70),
    SubmitMsg("r-4", b"x", 1.0, step_timeout=float("nan")),
    SubmitMsg("r-5", b"x", 1.0, resources={"bad name": 1.0}),
])
def test_the_socket_checks_a_submission_as_the_inbox_does(m: SubmitMsg) -> None:
    assert _refusal(check_submit, m) == _refusal(check_message, m)


def test_a_plain_submit_posts_what_submit_many_posts(tmp_path: Path) -> None:
    c = Client(tmp_path / "state", use_socket=False)
    plain = c.submit(b"abc")
    general = c.submit_many([b"abc"])[0]
    got = pending_submissions(c.state_dir)
    a, b = got[plain], got[general]
    assert msgspec.structs.replace(a, run_id="x", at=0.0) == \
        msgspec.structs.replace(b, run_id="x", at=0.0)
    with pytest.raises(TypeError):
        c.submit(b"abc", priority=True)  # type: ignore[arg-type]  # the general checks still run
