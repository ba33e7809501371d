"""Build and load the small C kernels behind the ``cpu`` backend.

Each op that has a ``cpu`` backend keeps its C source beside its Python files
(e.g. ``selective_scan/cpu.c``). On first use the source is compiled with the system C compiler
into a cache folder (``$EFFVIZ_CACHE`` or ``~/.cache/effviz``), keyed by a hash of the source,
flags and CPU, and loaded with ctypes. ctypes releases the GIL during the call, so a kernel can
run while the app serves other requests. Work is split over threads inside the C code: the
selective scan and the fused Mamba kernels use one persistent pool of pthreads (``pool.c``),
started on first use, so a call wakes waiting workers instead of creating threads; OpenMP is avoided because torch ships its own OpenMP runtime and two in one process
fight over cores.

If there is no compiler, or ``EFFVIZ_NO_NATIVE=1``, ``available()`` is False and the dispatcher
falls back to the pure-PyTorch backend: the project never depends on this library.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("effviz.kernels")

KERNEL_DIR = Path(__file__).parent
# -ffast-math is what lets gcc call glibc's vector expf (the exps are most of the work). It also
# assumes finite math: kernels must not rely on inf/NaN (use -FLT_MAX as "minus infinity").
# Each kernel reduces in a fixed order per row, so results stay deterministic run to run.
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-pthread"]
# Linked separately and without -ffast-math: linking with it adds crtfastmath.o, which would turn
# on flush-to-zero for the whole Python process (every torch/numpy op) when the library loads.
LDFLAGS = ["-shared", "-pthread"]
SOURCES = (
    "pool.c", "selective_scan/cpu.c", "mamba_inner/cpu.c", "bi_wkv/cpu.c", "causal_conv1d/cpu.c", "rms_norm/cpu.c",
    "wkv/cpu.c", "retention/cpu.c",
)
HEADERS = ("simd_math.h", "pool.h")  # included by the sources: part of the build's fingerprint


def _cache_dir() -> Path:
    return Path(os.environ.get("EFFVIZ_CACHE") or Path.home() / ".cache" / "effviz") / "native"


def _cpu_fingerprint() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in info.splitlines() if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


@functools.cache
def library() -> ctypes.CDLL | None:
    """Compile (once) and load all C kernels as one shared library; None when impossible."""
    if os.environ.get("EFFVIZ_NO_NATIVE") == "1":
        return None
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        log.info("no C compiler found: the 'cpu' backend is off, using 'torch'")
        return None
    sources = [KERNEL_DIR / s for s in SOURCES if (KERNEL_DIR / s).exists()]
    digest = hashlib.sha256()
    for src in [*sources, *(KERNEL_DIR / h for h in HEADERS)]:
        digest.update(src.read_bytes())
    digest.update(" ".join([compiler, *CFLAGS, *LDFLAGS, _cpu_fingerprint()]).encode())
    target = _cache_dir() / f"effviz_kernels_{digest.hexdigest()[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build beside the target then rename, so concurrent processes never load a half-written file.
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                objects = []
                for src in sources:
                    obj = Path(tmp) / (src.parent.name + ".o")
                    _run([compiler, *CFLAGS, "-c", str(src), "-o", str(obj)])
                    objects.append(str(obj))
                out = Path(tmp) / target.name
                _run([compiler, *LDFLAGS, *objects, "-o", str(out), "-lm"])
                os.replace(out, target)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", "") or err
            log.warning("building the native kernels failed, using 'torch' instead: %s", detail)
            return None
    try:
        return ctypes.CDLL(str(target))
    except OSError as err:
        log.warning("loading %s failed, using 'torch' instead: %s", target, err)
        return None


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


# Constant for the compiler: dynamo would otherwise trace into the build (file system calls it
# cannot put in a graph) each time it compiles a backend choice. The answer is fixed per process.
@torch.compiler.assume_constant_result
def available() -> bool:
    return library() is not None


def ptr(t) -> ctypes.c_void_p:
    """Raw data pointer of a contiguous tensor, for passing to C."""
    return ctypes.c_void_p(t.data_ptr())


def num_threads() -> int:
    return max(1, torch.get_num_threads())
