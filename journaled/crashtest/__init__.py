"""``journaled crashtest``: crash-recovery testing of a user's own runner.

A user points it at their runner and inputs and gets a verdict: every run
ends exactly once, with the outcome a crash-free run gives, however often
the supervisor and its workers are killed with ``kill -9``::

    crashtest ──Popen──> journaled run journaled.crashtest:wrapped_runner   (the supervisor)
      │  SIGKILL at a seeded moment, or          ├── forkserver ── worker, worker, ...
      │  a failpoint aimed through the env       └── resource tracker
      │  SIGSTOP + SIGKILL of single workers
      └── reads, between restarts: the journal, and the exec log every
          worker and the terminal hook append to (O_APPEND, one line each):

            exec <run_id> <step> <attempt> <pid>     a worker is about to run a step
            term <run_id> <status> <result-hex>      on_terminal reported an outcome

Phases:

1. Reference: the workload runs crash-free in a temporary state directory;
   each run's outcome (status, result, error) is what every later run must
   end with. Run ids are fixed (``ct-0000``, ...) so the phases line up.
2. Crash rounds, each in a fresh state directory, in power-loss mode
   (``JOURNALED_SIMULATE_POWER_LOSS=1``: a kill loses what a power cut
   would) unless ``--no-power-loss``: submit everything, then restart the
   supervisor over and over, each time killing it after a seeded random
   delay, or letting a failpoint aimed at one exact place
   (``journal.before_sync``, ``supervisor.before_dispatch``, ``compact.*``,
   ...) kill it, and meanwhile killing single workers. Once ``--kills``
   kills are spent a last clean supervisor finishes the work. A round that
   finishes before the budget is spent is checked and followed by another.
3. Checks, per round (each names its run and shows that run's records):

   a. every run has exactly one ``Terminated`` record and is terminal;
   b. final status, result and error equal the reference;
   c. dispatch only after the lease is durable: whenever a supervisor is
      gone, every attempt a worker ran has its ``Leased`` record on disk;
      and no ``(run, step, attempt)`` ran twice (a lost lease comes back
      after the restart with the same attempt number);
   d. report only after the outcome is durable: whenever a supervisor is
      gone, every outcome the hook reported has its ``Terminated`` record
      on disk; and no step of a run ran after its outcome was reported;
   e. every reported outcome equals the final one;
   f. failures per step stay within ``--max-attempts``;
   g. ``journaled verify`` passes (frames, CRCs, invariants);
   h. no reader saw an outcome the journal later lost or changed: a
      ``Client`` in another process (``reader``) polls statuses all round
      long, across kills and restarts, and logs every change it saw;

   plus process checks: no process of a killed supervisor survives it by
   more than ORPHAN_GRACE = 10 s (an orphan would run steps twice), no supervisor hangs,
   no supervisor exits by itself with an error (each such self-exit is
   counted, and the round goes on), and no supervisor's stderr holds a
   ``Traceback``, ``leaked`` or ``KeyError`` line (the clean-stderr check).

Options for a harder torture: ``--kill-helpers`` also kills the
supervisor's forkserver and resource tracker (found among its children by
command line), each followed by a worker kill so that a replacement worker
must be made; ``--payload-bytes N`` carries N bytes in every ``Continue``
payload, checked on the next step.

Modules: ``execlog`` (what runs in the supervisor and workers, and the log
it writes), ``procs`` (the process tree), ``archive`` (the journal side),
``checks``, ``reader`` (check h's process), ``plan`` (each restart's
kills), ``supervise`` (one supervisor's life), ``driver`` (rounds),
``report``, ``cli`` (the click command).

The caller's ``JOURNALED_FAILPOINTS`` and
``JOURNALED_UNSAFE_DISPATCH_BEFORE_SYNC`` reach the supervisors of the
crash rounds (never the reference): that is how the suite proves a broken
write-ahead ordering makes crashtest fail.

Aimed failpoints go two times in three to the windows of the write-ahead
rule (before the write, before the sync, right after a send, before the
hook), round-robin, at a random one of the commits left to do; a crash
before the write or the sync comes with a short delay after each send, so
a step sent too early has the time to start and the crash can show it.

Kills that crashtest itself makes must not change a run's outcome:
supervisor crashes are not the step's fault, so the crash rounds raise
``--max-abandons`` out of reach; a worker kill is a counted failure, so a
worker is first stopped (SIGSTOP), and killed only if the step it runs
stays below ``--max-attempts`` failures counting the ones the reference
run needed, else resumed.
"""


from __future__ import annotations

from .archive import Archive, Outcome, failures_per_step, final_outcomes
from .checks import (
    CHECKS,
    DIRTY_STDERR,
    ORPHAN_GRACE,
    Violation,
    WriteAheadCheck,
    check_exec_log,
    check_readers,
    check_round,
    dirty_lines,
)
from .cli import crashtest
from .driver import NO_ABANDON_LIMIT, PASS_THROUGH, Aborted, CrashTest, UsageError
from .execlog import (
    ENV_APP,
    ENV_LOG,
    ENV_PAYLOAD,
    HOOK,
    WRAPPED,
    ExecLog,
    Line,
    padding,
    record_terminal,
    wrapped_runner,
)
from .plan import AIM_EXTRA, AIM_POINTS, AIM_SHARE, CRITICAL, Config, Plan, Stats
from .reader import Seen, read_log
from .report import build_report, format_report

__all__ = ["crashtest", "wrapped_runner", "record_terminal", "CrashTest", "Config",
           "ExecLog", "Line", "Archive", "WriteAheadCheck", "check_exec_log", "check_round",
           "check_readers", "final_outcomes", "format_report", "build_report", "CHECKS",
           "AIM_POINTS", "AIM_EXTRA", "AIM_SHARE", "CRITICAL", "ENV_APP", "ENV_LOG",
           "ENV_PAYLOAD", "HOOK", "WRAPPED", "NO_ABANDON_LIMIT", "PASS_THROUGH", "ORPHAN_GRACE",
           "DIRTY_STDERR", "Outcome", "Violation", "Plan", "Stats", "Seen", "read_log",
           "dirty_lines", "padding", "failures_per_step", "UsageError", "Aborted"]
