"""Batch jobs: the models of a pipeline spec re-run over an archive on Dask.

``sciserve batch run SPEC.yaml`` plans a job (:mod:`.shards`: which files
and Parquet row groups, checked before any work starts), runs one Dask task
per shard (:mod:`.worker`: the stream pipeline's own decoding, features,
model and filter steps), each writing its output atomically, and ends by
verifying every shard's output against its input (:mod:`.job`).
:mod:`.executor` provides the Dask cluster: a local one on 127.0.0.1 by
default, or an existing scheduler.  :mod:`.runner` executes the job records
of the registry database (:mod:`sciserve.jobs`): ``sciserve jobs runner``,
and a child process of ``sciserve serve``.
"""
