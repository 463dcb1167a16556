"""The pure parts of issue 15: the tick/catch-up plan (time passed in), the schedule and
pause folds, fork records, and that all of them survive a snapshot (compaction) and replay."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import pytest

from journaled.errors import RunConflict
from journaled.forking import fork_record, recorded_payload
from journaled.pausing import Pauses
from journaled.records import (
    DispatchPaused,
    Schedule,
    ScheduleChanged,
    ScheduleCursor,
    ScheduleSet,
    decode,
    encode,
)
from journaled.schedules import (
    CronUnavailable,
    check_cron,
    next_tick,
    plan,
    tick_id,
)
from journaled.state import State, WorkerResult

T0 = datetime(2026, 12, 1, 2, 0, 0, tzinfo=timezone.utc).timestamp()  # a whole minute


def sched(cron: str = "* * * * *", catch_up: str = "one", cursor: float = T0,
          tz: str = "UTC", paused: bool = False) -> Schedule:
    return Schedule("s", cron, b"in", cursor, cursor, {}, catch_up, tz, paused)


# -------------------------------------------------------------------- the plan


@pytest.mark.timeout(10)
@pytest.mark.parametrize("catch_up", ["none", "one", "all"])
def test_an_on_time_tick_is_submitted_whatever_the_catch_up(catch_up):
    p = plan(sched(catch_up=catch_up, cursor=T0 + 0.5), T0 + 60.2)
    assert p is not None and p.ticks == [T0 + 60], p
    assert p.cursor == T0 + 60 and not p.late and p.missed == 0


@pytest.mark.timeout(10)
def test_nothing_is_due_before_the_next_tick_or_at_the_cursor():
    assert plan(sched(cursor=T0), T0 + 59.9) is None
    assert plan(sched(cursor=T0 + 60), T0 + 60.5) is None, "a handled tick is never due again"
    assert plan(sched(paused=True), T0 + 3600) is None, "a paused schedule submits nothing"


@pytest.mark.timeout(10)
def test_after_downtime_none_skips_one_submits_the_latest_all_submits_each():
    now = T0 + 10 * 60 + 40  # ten per-minute ticks missed, the latest 40 s late (grace 30)
    none = plan(sched(catch_up="none"), now)
    one = plan(sched(catch_up="one"), now)
    every = plan(sched(catch_up="all"), now)
    latest = T0 + 600
    assert none is not None and none.ticks == [] and none.cursor == latest and none.late
    assert one is not None and one.ticks == [latest] and one.cursor == latest and one.missed
    assert every is not None and every.ticks == [T0 + 60 * k for k in range(1, 11)], \
        "catch-up all submits every missed tick, oldest first"
    assert every.cursor == latest and every.missed == 0


@pytest.mark.timeout(10)
def test_catch_up_none_still_runs_the_latest_tick_when_it_is_within_its_grace():
    # per-minute: the grace is 30 s; the latest tick is 10 s late, older ones were missed
    p = plan(sched(catch_up="none"), T0 + 5 * 60 + 10)
    assert p is not None and p.ticks == [T0 + 300] and p.missed >= 1


@pytest.mark.timeout(10)
def test_catch_up_all_is_capped_to_the_most_recent_ticks():
    now = T0 + 86400  # a day of per-minute ticks: 1440 missed
    p = plan(sched(catch_up="all"), now, cap=1000)
    assert p is not None and len(p.ticks) == 1000
    assert p.ticks[-1] == now and p.ticks[0] == now - 999 * 60, "the newest 1000, in order"
    assert p.missed >= 1, "the older ones are reported skipped"


@pytest.mark.timeout(10)
def test_seconds_field_and_time_zones():
    assert next_tick("* * * * * */5", "UTC", T0 + 1) == T0 + 5, "6th field: seconds"
    # 02:00 in Paris is 01:00 UTC in December (CET, +1)
    assert next_tick("0 2 * * *", "Europe/Paris", T0) == T0 + 23 * 3600
    assert tick_id("nightly", T0) == "nightly@2026-12-01T02:00:00Z"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("expr,tz,needle", [
    ("61 * * * *", "UTC", "61 * * * *"), ("not cron", "UTC", "not cron"),
    ("* * * * *", "Mars/Olympus", "Mars/Olympus"), ("", "UTC", "cron")])
def test_a_bad_expression_or_zone_is_one_line_naming_it(expr, tz, needle):
    with pytest.raises(ValueError) as e:
        check_cron(expr, tz)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.timeout(10)
def test_without_croniter_schedules_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "croniter", None)  # import croniter -> ImportError
    with pytest.raises(CronUnavailable) as e:
        check_cron("* * * * *")
    assert "pip install" in str(e.value) and "\n" not in str(e.value)


# -------------------------------------------------------------------- the folds


def _replayed(state: State) -> State:
    """A fresh state from the snapshot of ``state`` (what compaction leaves), encoded."""
    fresh = State()
    for part in state.snapshot(T0 + 999):
        fresh.apply(decode(encode(part)))
    return fresh


@pytest.mark.timeout(10)
def test_schedule_records_fold_and_survive_a_snapshot():
    st = State()
    st.apply_all([ScheduleSet("a", "* * * * *", b"x", T0, {"h": "1"}, "all", "Europe/Paris"),
                  ScheduleSet("b", "0 2 * * *", b"y", T0), ScheduleCursor("a", T0 + 120, T0),
                  ScheduleChanged("b", "pause", T0), ScheduleSet("c", "* * * * *", b"", T0),
                  ScheduleChanged("c", "remove", T0)])
    assert sorted(st.schedules.by_name) == ["a", "b"]
    # the same definition again (an inbox file read twice) keeps the cursor
    st.apply(ScheduleSet("a", "* * * * *", b"x", T0 + 500, {"h": "1"}, "all", "Europe/Paris"))
    assert st.schedules.by_name["a"].cursor == T0 + 120
    st.apply(ScheduleCursor("a", T0 + 60, T0))
    assert st.schedules.by_name["a"].cursor == T0 + 120, "a cursor never moves back"
    again = _replayed(st)
    assert again.schedules.by_name == st.schedules.by_name
    assert again.schedules.by_name["b"].paused
    again.apply(ScheduleChanged("b", "resume", T0 + 7200))
    assert again.schedules.by_name["b"].cursor == T0 + 7200, \
        "ticks that fell while paused are not owed after a resume"


@pytest.mark.timeout(10)
def test_pauses_fold_match_by_key_and_survive_a_snapshot():
    p = Pauses()
    p.apply(DispatchPaused("k1", True, T0))

    class R:
        key = "k1"

    class Other:
        key = "k2"

    assert p.holds(R()) and not p.holds(Other())
    assert p.command("k1", True, T0) == [], "pausing a paused key again records nothing"
    st = State()
    st.apply_all([DispatchPaused("k1", True, T0), DispatchPaused("", True, T0, True)])
    again = _replayed(st)
    assert again.pauses.all and again.pauses.keys == {"k1"}
    again.apply(DispatchPaused("", False, T0, True))
    assert not again.pauses, "resume --all resumes every key too"


@pytest.mark.timeout(10)
def test_paused_runs_keep_their_place_in_line():
    st = State()
    for i in range(4):
        st.submit(f"r{i}", b"", T0 + i)
    st.apply(DispatchPaused("", True, T0, True))
    assert st.due_runs(T0 + 9, 10) == [] and st.idle(), "paused: nothing leased, and idle"
    st.apply(DispatchPaused("", False, T0, True))
    assert [r.run_id for r in st.due_runs(T0 + 9, 10)] == ["r0", "r1", "r2", "r3"]


# ----------------------------------------------------------------------- fork


def _three_steps(st: State, rid: str = "src") -> None:
    st.submit(rid, b"in", T0)
    for step in range(3):
        run = st.due_runs(T0, 1)[0]
        st.lease(run, 0, T0)
        kind = "continue" if step < 2 else "succeed"
        st.complete(rid, run.attempt, WorkerResult(kind, f"p{step + 1}".encode()), T0)


@pytest.mark.timeout(10)
def test_each_step_payload_is_kept_and_a_fork_starts_from_it():
    st = State()
    _three_steps(st)
    src = st.runs["src"]
    assert src.trail == [b"p1", b"p2"] and recorded_payload(src, 0) == b"in"
    rec = fork_record(src, "src~fork1", 2, None, T0 + 1)
    assert (rec.step, rec.payload, rec.input, rec.trail) == (2, b"p2", b"in", [b"p1", b"p2"])
    st.fork(rec)
    fork = st.runs["src~fork1"]
    assert (fork.step, fork.payload, fork.status) == (2, b"p2", "running")
    assert [r.run_id for r in st.due_runs(T0 + 1, 5)] == ["src~fork1"]
    assert st.runs["src"].status == "succeeded", "the old run is untouched"
    assert st.fork(rec) == [], "the same fork again is a no-op"
    with pytest.raises(RunConflict):
        st.fork(fork_record(st.runs["src"], "src~fork1", 0, b"other", T0))
    again = _replayed(st)
    assert again.runs["src"].trail == [b"p1", b"p2"], "the trail survives a snapshot"
    assert again.runs["src~fork1"].step == 2


@pytest.mark.timeout(10)
def test_fork_errors_are_one_line_and_old_runs_fork_where_they_can():
    st = State()
    _three_steps(st)
    src = st.runs["src"]
    with pytest.raises(ValueError, match="reached step 2 only"):
        fork_record(src, "x", 3, None, T0)
    src.trail = []  # a run finished before per-step payloads were kept
    assert fork_record(src, "x", 0, None, T0).payload == b"in", "step 0 forks from the input"
    with pytest.raises(ValueError, match="no payload recorded for step 1"):
        fork_record(src, "x", 1, None, T0)
    assert fork_record(src, "x", 1, b"given", T0).payload == b"given"


@pytest.mark.timeout(10)
def test_a_fork_from_the_step_the_source_stopped_at_keeps_its_memos():
    st = State()
    st.submit("m", b"in", T0)
    run = st.due_runs(T0, 1)[0]
    st.lease(run, 0, T0)
    st.memo_put("m", run.attempt, "seen", b"v")
    st.complete("m", run.attempt, WorkerResult("error", permanent=True, error="x"), T0)
    assert st.runs["m"].dead
    assert fork_record(st.runs["m"], "m~fork1", 0, None, T0).memos == {"seen": b"v"}
    assert fork_record(st.runs["m"], "m~fork1", 0, b"new", T0).memos == {}, \
        "a given payload is new work: the old memos do not apply"


@pytest.mark.timeout(10)
def test_the_trail_is_bounded_and_a_step_past_the_bound_needs_its_payload_given():
    from journaled.run import TRAIL_BYTES

    st = State()
    st.submit("big", b"in", T0)
    run = st.runs["big"]
    chunk = b"x" * (TRAIL_BYTES // 2 + 1)
    for _ in range(3):
        run.keep_payload(chunk)
    assert run.trail[0] == chunk and run.trail[1:] == [None, None], \
        "past TRAIL_BYTES a step's entry is None: the snapshot stays bounded"
    run.step = 3
    with pytest.raises(ValueError, match="size bound"):
        fork_record(run, "x", 2, None, T0)
