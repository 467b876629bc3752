"""Jobs and schedules: batch work recorded in the registry database.

:mod:`.records` keeps job records (state machine, progress, log lines) that
every process sharing the database sees; runners in the batch layer
(:mod:`sciserve.batch.runner`) claim and execute them.  :mod:`.schedules`
submits jobs at cron times or when a model's alias moves.
"""

from .records import JobLogLine, JobOrigin, JobRecord, JobState, JobStore
from .schedules import MissedPolicy, Run, RunOutcome, Schedule, Scheduler, ScheduleStore

__all__ = [
    "JobLogLine",
    "JobOrigin",
    "JobRecord",
    "JobState",
    "JobStore",
    "MissedPolicy",
    "Run",
    "RunOutcome",
    "Schedule",
    "ScheduleStore",
    "Scheduler",
]
