"""Jobs and schedules: batch work recorded in the registry database.

:mod:`.records` keeps job records (state machine, progress, log lines) that
every process sharing the database sees; runners in the batch layer
(:mod:`sciserve.batch.runner`) claim and execute them.
"""

from .records import JobLogLine, JobRecord, JobState, JobStore

__all__ = ["JobLogLine", "JobRecord", "JobState", "JobStore"]
