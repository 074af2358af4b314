"""The exit codes of every `roomlens` command, in one table (for schedulers and scripts).

`roomlens index`: 0 all done; 3 done, but some feed lines or images failed or removals were
skipped (see `index_runs.failures`); 1 the run failed (the next run resumes); 75 another run
holds the lock (try later); 130 interrupted. `roomlens doctor`: 0 healthy, 1 problems found,
75 busy. Every command: 2 for a usage error.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # the command failed, or the doctor found problems; the next run can finish it
    USAGE = 2
    PARTIAL = 3  # finished, but some feed lines or images failed (see the report)
    BUSY = 75  # EX_TEMPFAIL: another run holds the lock; try again later
    INTERRUPTED = 130  # SIGINT / SIGTERM
