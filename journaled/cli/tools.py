"""The commands about the journal itself: ``step`` (re-run a recorded step here),
``verify``, ``repair``, ``log``, ``compact``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import fail, handles_errors, json_option, main, state_option


@main.command("step")
@click.argument("run_id")
@click.argument("step_number", type=click.IntRange(min=0))
@click.option("--app", help="module:function to run (default: the one the supervisor recorded).")
@click.option("--pdb", "use_pdb", is_flag=True, help="Drop into the debugger on an exception.")
@state_option(must_exist=True)
@handles_errors
def step_cmd(run_id: str, step_number: int, app: str | None, use_pdb: bool, state: Path) -> None:
    """Re-run one recorded step here, with its recorded payload, headers and attempt.

    Prints the outcome; the journal is not touched. The way to debug a failed
    step from production: journaled step RUN_ID 3 --pdb
    """
    from ..debug import rerun_step

    code = rerun_step(state, run_id, step_number, app, use_pdb)
    sys.exit(code)



@main.command()
@json_option
@state_option(must_exist=True)
@handles_errors
def verify(as_json: bool, state: Path) -> None:
    """Check the journal: headers, frames, CRCs, and the state machine's invariants.

    Also checks STATE/blobs/: every blob a run still needs must be there with
    its size and hash (an error otherwise); blobs nothing names are counted as
    orphans (a warning: the supervisor's sweep removes them past retention).

    Exit 0 when a supervisor would start on it as is (a torn tail, which start-up
    cuts, is reported but is not damage); exit 1 with segment, byte offset and
    what is wrong otherwise.
    """
    from ..tools import check

    c = check(state)
    r = c.report
    if as_json:
        click.echo(json.dumps({
            "ok": c.ok, "segments": r.segments, "records": r.records, "bytes": r.bytes,
            "runs": c.runs, "statuses": c.statuses, "violations": c.violations,
            "archive": {"runs": c.archived, "schema_version": c.archive_schema},
            "warnings": c.warnings,
            "blobs": None if c.blobs is None else {
                "count": c.blobs.blobs, "bytes": c.blobs.bytes, "orphans": c.blobs.orphans,
                "orphan_bytes": c.blobs.orphan_bytes, "temp_files": c.blobs.temp_files,
                "swept": c.blobs.gone},
            "torn": None if r.torn is None else {"segment": r.torn.segment,
                                                 "offset": r.torn.offset,
                                                 "dropped_bytes": r.torn.dropped_bytes,
                                                 "reason": r.torn.reason},
            "damage": None if r.damage is None else {"segment": r.damage.segment,
                                                     "offset": r.damage.offset,
                                                     "what": r.damage.what}}))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in c.statuses.items()) or "none"
        click.echo(f"{r.segments} segments, {r.records} records, {r.bytes / 1e6:.2f} MB; "
                   f"{c.runs} runs ({summary})")
        if c.archive_schema:
            kept = ", ".join(f"{n} {s}" for s, n in sorted(c.archived.items())) or "none"
            click.echo(f"archive: {sum(c.archived.values())} finished runs ({kept}); "
                       f"schema version {c.archive_schema}")
        if r.torn is not None:
            click.echo(f"torn tail: {r.torn.segment} at byte {r.torn.offset}: {r.torn.reason} "
                       f"({r.torn.dropped_bytes} bytes; the next start or 'journaled repair' "
                       "cuts it)")
        if c.blobs is not None and (c.blobs.blobs or c.blobs.temp_files):
            click.echo(f"{c.blobs.blobs} blobs, {c.blobs.bytes / 1e6:.2f} MB")
        for v in c.violations:
            click.echo(f"invariant broken: {v}")
        for w in c.warnings:
            click.echo(f"warning: {w}")
        if r.damage is not None:
            click.echo(f"damage: {r.damage}")
        click.echo("ok" if c.ok else "FAILED")
    sys.exit(0 if c.ok else 1)


@main.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@state_option(must_exist=True)
@handles_errors
def repair(yes: bool, state: Path) -> None:
    """Cut a torn or damaged journal back to its last whole record (a backup is kept).

    Refuses while a supervisor holds the state directory.
    """
    from ..journal import StateLock
    from ..journal import repair as do_repair
    from ..journal import verify as do_verify
    from ..records import decode

    holder = StateLock.holder(state)
    if holder is not None:
        fail(f"a supervisor (pid {holder}) holds {state}; stop it before repairing")
    # With the decoder: a record whose CRC passes but which does not decode is
    # damage too, cut there like any other (the backup keeps it).
    r = do_verify(state / "journal", decode)
    bad = r.damage or r.torn
    if bad is None:
        click.echo("journal is clean; nothing to repair")
        return
    where = (f"{r.damage.segment} at byte {r.damage.offset}: {r.damage.what}" if r.damage
             else f"{r.torn.segment} at byte {r.torn.offset}: {r.torn.reason}")
    click.echo(f"will cut the journal at {where}; everything after it is moved to *.broken")
    if not yes and not click.confirm("proceed?", default=False):
        fail("not repaired", 1)
    rep = do_repair(state / "journal", decode)
    click.echo(f"cut {rep.segment} at byte {rep.offset} ({rep.dropped_bytes} bytes dropped); "
               f"backup: {rep.backup}" + (f"; moved aside: {', '.join(rep.moved_aside)}"
                                          if rep.moved_aside else ""))


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they are written.")
@click.option("--run", "run_id", help="Only records of this run.")
@json_option
@state_option(must_exist=True)
@handles_errors
def log(follow: bool, run_id: str | None, as_json: bool, state: Path) -> None:
    """Print the journal's records, one per line (JSON lines with --json)."""
    from ..notify import DirWatcher
    from ..replay import Entry, Tail
    from ..tools import record_dict, record_line

    jdir = state / "journal"
    if not jdir.is_dir():
        fail(f"no journal in {state}; is that the right --state?")
    tailer = Tail(jdir)  # decode errors are JournalCorrupt with segment and offset

    def show(entries: list[Entry]) -> None:
        for _seg, _off, rec in entries:
            if run_id is not None and getattr(rec, "run_id", None) != run_id:
                continue
            click.echo(json.dumps(record_dict(rec)) if as_json else record_line(rec))

    with DirWatcher(jdir) as watcher:
        show(tailer.poll()[1])
        while follow:
            watcher.wait(1.0)
            reset, entries = tailer.poll()
            if reset and not as_json:
                click.echo("-- journal compacted; continuing from its snapshot --")
            show(entries)


@main.command()
@click.option("--retention", type=click.FloatRange(min=0), default=7 * 86400.0,
              show_default=True, help="Seconds to keep finished runs in the archive.")
@state_option(must_exist=True)
@handles_errors
def compact(retention: float, state: Path) -> None:
    """Snapshot live state into a new segment, drop old segments and expired archive rows.

    With a supervisor running, asks it to compact (it uses its own --retention).
    """
    from ..inbox import CompactMsg, post
    from ..journal import StateLock
    from ..tools import compact_offline

    if StateLock.is_locked(state):
        post(state, CompactMsg(time.time()))
        click.echo("compaction requested from the running supervisor")
        return
    before, after = compact_offline(state, retention)
    click.echo(f"compacted: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
