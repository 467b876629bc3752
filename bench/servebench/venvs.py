"""The peer servers' virtualenvs under ``bench/.peers`` and the one step that makes them.

Triton and MLServer pin dependencies that clash with sciserve's (protobuf,
fastapi, uvloop, numpy), so each runs from a venv of its own.  Creating them
is the benchmark's only download and happens only in ``serve.py --setup``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MLSERVER", "PEERS_DIR", "TRITON", "PeerVenv", "setup_peers"]

BENCH_DIR = Path(__file__).resolve().parent.parent
#: The peers' own code (Triton launcher, MLServer runtime), run inside their venvs.
PEERS_DIR = BENCH_DIR / "peers"
_CACHE = BENCH_DIR / ".peers"


@dataclass(frozen=True)
class PeerVenv:
    """A venv, what to install into it and which interpreter to build it from."""

    name: str
    path: Path
    packages: tuple[str, ...]
    base_python: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, program: str) -> Path:
        return self.path / "bin" / program

    def missing(self) -> str | None:
        """Why this venv cannot be used, or ``None`` when it is ready."""
        if not self.python.exists():
            return f"{self.path.name} not found; run: python bench/serve.py --setup"
        return None

    def create(self) -> None:
        """Create the venv (if needed) and install the packages."""
        if not self.python.exists():
            print(f"creating {self.path} from {self.base_python}", flush=True)
            subprocess.run([self.base_python, "-m", "venv", str(self.path)], check=True)
        print(f"installing into {self.path.name}: {' '.join(self.packages)}", flush=True)
        subprocess.run(
            [str(self.python), "-m", "pip", "install", "--quiet", *self.packages], check=True
        )


#: PyTriton's Python-backend stub links against the system's ``libpython3.11.so``,
#: so its venv must come from the system interpreter that matches that library
#: (builds without a shared libpython, e.g. pyenv's default, fail at model load).
TRITON = PeerVenv(
    name="triton",
    path=_CACHE / "triton-venv",
    packages=("nvidia-pytriton==0.7.*", "onnxruntime", "numpy"),
    base_python=os.environ.get("BENCH_TRITON_PYTHON", "/usr/bin/python3.11"),
)

MLSERVER = PeerVenv(
    name="mlserver",
    path=_CACHE / "mlserver-venv",
    # MLServer 1.7.1 predates uvloop 0.22; keep a uvloop from its own time.
    packages=("mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "numpy"),
    base_python=sys.executable,
)


def setup_peers() -> None:
    """Create both peer venvs: the benchmark's only network access."""
    for venv in (TRITON, MLSERVER):
        venv.create()
