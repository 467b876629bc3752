"""HTCondor submit descriptions and PBS job scripts as dask-jobqueue generates them.

No HTCondor or PBS daemons run here (Debian packages neither), so the
generated text is checked field by field: resources, the site's extra
directives, the environment set-up, and the worker command that dials the
scheduler.
"""

from __future__ import annotations

import pytest

htcondor = pytest.importorskip("dask_jobqueue.htcondor")
pbs = pytest.importorskip("dask_jobqueue.pbs")

SCHEDULER = "tcp://10.0.0.5:8786"
PYTHON = "/cvmfs/sciserve/venv/bin/python"


def _submit_fields(description: str) -> dict[str, str]:
    """The ``key = value`` lines of an HTCondor submit description."""
    fields = {}
    for line in description.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def test_htcondor_submit_description() -> None:
    job = htcondor.HTCondorJob(
        scheduler=SCHEDULER,
        name="rescore-0",
        cores=2,
        processes=1,
        memory="4GiB",
        disk="10GiB",
        python=PYTHON,
        log_directory="/scratch/logs",
        job_script_prologue=["export SCISERVE_HOME=/cvmfs/sciserve/home"],
        job_extra_directives={
            "+SingularityImage": '"/cvmfs/images/sciserve.sif"',
            "requirements": 'OpSysAndVer == "AlmaLinux9"',
        },
    )
    description = job.job_script()
    fields = _submit_fields(description)
    assert description.startswith("#!/usr/bin/env condor_submit\n")
    assert description.rstrip().endswith("Queue")
    assert fields["RequestCpus"] == "MY.DaskWorkerCores"
    assert fields["MY.DaskWorkerCores"] == "2"
    assert fields["MY.DaskWorkerMemory"] == str(4 * 2**30)
    assert fields["MY.DaskWorkerDisk"] == str(10 * 2**30)
    assert fields["RequestMemory"] == "floor(MY.DaskWorkerMemory / 1048576)"
    assert fields["RequestDisk"] == "floor(MY.DaskWorkerDisk / 1024)"
    assert fields["LogDirectory"] == "/scratch/logs"
    assert fields["Output"] == "$(LogDirectory)/worker-$F(MY.JobId).out"
    assert fields["Error"] == "$(LogDirectory)/worker-$F(MY.JobId).err"
    assert fields["+SingularityImage"] == '"/cvmfs/images/sciserve.sif"'
    assert fields["requirements"] == 'OpSysAndVer == "AlmaLinux9"'
    assert fields["Executable"] == "/bin/sh"
    arguments = fields["Arguments"]
    assert arguments.startswith("\"-c 'export SCISERVE_HOME=/cvmfs/sciserve/home; ")
    assert f"{PYTHON} -m distributed.cli.dask_worker {SCHEDULER} --name rescore-0" in arguments
    assert "--nthreads 2" in arguments
    assert "--memory-limit 4.00GiB" in arguments


def test_pbs_job_script() -> None:
    job = pbs.PBSJob(
        scheduler=SCHEDULER,
        name="rescore-0",
        job_name="sciserve-batch",
        cores=4,
        processes=1,
        memory="8GiB",
        queue="workq",
        account="astro",
        walltime="01:30:00",
        python=PYTHON,
        job_script_prologue=["module load python"],
        job_extra_directives=["-l place=scatter"],
    )
    script = job.job_script()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    directives = [line.removeprefix("#PBS ") for line in lines if line.startswith("#PBS ")]
    assert directives == [
        "-N sciserve-batch",
        "-q workq",
        "-A astro",
        "-l select=1:ncpus=4:mem=8192MB",  # PBS units are binary: 8192MB = 8 GiB
        "-l walltime=01:30:00",
        "-l place=scatter",
    ]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[0] == "module load python"
    assert commands[1].startswith(f"{PYTHON} -m distributed.cli.dask_worker {SCHEDULER} ")
    assert "--name rescore-0 --nthreads 4 --memory-limit 8.00GiB" in commands[1]
