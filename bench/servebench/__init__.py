"""The serving benchmark's parts; ``bench/serve.py`` puts them together.

model     the ONNX MLP and its sciserve package
payloads  request bodies, prebuilt per batch size and protocol
venvs     the peer servers' virtualenvs (``serve.py --setup``)
servers   starting sciserve, Triton and MLServer on loopback, stopping them
procs     child processes stopped by their own process group
verify    checking each server's answer against in-process ONNX Runtime
wrk       HTTP load with wrk
h2load    gRPC load with h2load
inproc    the in-process ONNX Runtime ceiling
cpu       CPU of a server's process tree and of the load generator, per run
runner    the server x protocol x concurrency x batch matrix
report    the table, ratios, CPU columns, the scaling row and targets
machine   CPU, cores and tool versions for the record
"""

import os

# The harness talks gRPC itself (answer checks) and then forks load
# generators and servers; gRPC's fork handlers can hang such a fork while its
# threads are busy.  Every child execs at once, so they are not needed.
# (Set before anything imports grpc: grpc reads it when it is imported.)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
