"""ctypes wrapper of ``cpu.c``: a Mamba mixer's inner part fused for CPU inference, for one
branch (causal Mamba) or Vim's two (bimamba v2). Plain functions of tensors, no autograd.

Validation depends only on the inputs' shapes, strides and dtypes, so it runs once per such
signature (cached) rather than on every call: a Vim-Ti forward makes 48 of these calls.
"""
from __future__ import annotations

import ctypes
import functools
from typing import NamedTuple

import torch

from .. import native

_INNER_ARGS = [ctypes.c_void_p] * 19 + [ctypes.c_int64] * 9 + [ctypes.c_float, ctypes.c_int]
_CONV_ARGS = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 7 + [ctypes.c_int]


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = native.library()
    lib.mamba_inner_fwd.argtypes, lib.mamba_inner_fwd.restype = _INNER_ARGS, ctypes.c_int
    lib.mamba_conv_fwd.argtypes, lib.mamba_conv_fwd.restype = _CONV_ARGS, None
    return lib


class Branch(NamedTuple):
    """One Mamba branch's parameters, as its modules hold them (fp32 CPU tensors).

    conv_weight (dim, K), or (dim, 1, K) as nn.Conv1d holds it (taking the view would cost an op
    per call), conv_bias (dim,) or None, x_proj_weight (R + 2N, dim),
    dt_weight (dim, R), dt_bias (dim,), A_log (dim, N), D (dim,) or None."""

    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None
    x_proj_weight: torch.Tensor
    dt_weight: torch.Tensor
    dt_bias: torch.Tensor
    A_log: torch.Tensor
    D: torch.Tensor | None


def _signature(*tensors: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device.type) for t in tensors)


def _fail(name: str, problem: str) -> None:
    raise ValueError(f"mamba_inner (cpu backend): {name} {problem}")


def _check(name: str, sig: tuple | None, shape: tuple[int, ...], contiguous_from: int = 0) -> None:
    """sig: a _signature entry. The dims from ``contiguous_from`` on must be packed (row-major)."""
    if sig is None:
        _fail(name, "is missing")
    got, strides, dtype, device = sig
    if device != "cpu" or dtype != torch.float32:
        _fail(name, f"must be a float32 CPU tensor, got {dtype} on {device}")
    if got != shape:
        _fail(name, f"must have shape {shape}, got {got}")
    packed = 1
    for dim in range(len(shape) - 1, contiguous_from - 1, -1):
        if shape[dim] != 1 and strides[dim] != packed:
            _fail(name, f"must be contiguous in its last {len(shape) - contiguous_from} dims, got strides {strides}")
        packed *= shape[dim]


@functools.lru_cache(maxsize=256)
def _validate_conv(x_sig: tuple, branch_sigs: tuple) -> None:
    if len(x_sig[0]) != 3:
        _fail("x", f"must be (batch, dim, L), got {x_sig[0]}")
    batch, dim, length = x_sig[0]
    _check("x", x_sig, (batch, dim, length), contiguous_from=1)
    for k, (w, b) in enumerate(branch_sigs):
        if w is None or len(w[0]) not in (2, 3) or (len(w[0]) == 3 and w[0][1] != 1):
            _fail(f"conv_weight[{k}]", f"must be (dim, K) or (dim, 1, K), got {None if w is None else w[0]}")
        _check(f"conv_weight[{k}]", w, (dim, *w[0][1:]))
        if b is not None:
            _check(f"conv_bias[{k}]", b, (dim,))
    if len(branch_sigs) == 2 and branch_sigs[0][0][0][-1] != branch_sigs[1][0][0][-1]:
        _fail("conv_weight", f"of the two branches have different kernel sizes: {branch_sigs[0][0][0]} and {branch_sigs[1][0][0]}")


def mamba_conv_cpu(x: torch.Tensor, branches: tuple[Branch, ...], start: int = 0, stop: int | None = None
                   ) -> torch.Tensor:
    """u[k] = silu(causal depthwise conv1d of x by branch k's conv), forward in time for k = 0 and
    backward (over the flipped sequence, flipped back) for k = 1, at steps [start, stop) only.

    x: (batch, dim, L) fp32 whose (dim, L) planes are contiguous (a channel slice of a bigger
    tensor is fine); 1 or 2 branches. Returns u (len(branches), batch, dim, stop - start)."""
    if len(branches) not in (1, 2):
        raise ValueError(f"mamba_inner (cpu backend): 1 or 2 branches, got {len(branches)}")
    _validate_conv(_signature(x)[0], tuple(_signature(br.conv_weight, br.conv_bias) for br in branches))
    batch, dim, length = x.shape
    stop = length if stop is None else stop
    if not 0 <= start <= stop <= length:
        raise ValueError(f"mamba_inner (cpu backend): steps [{start}, {stop}) are not within the sequence's {length}")
    u = x.new_empty(len(branches), batch, dim, stop - start)
    second = branches[1] if len(branches) == 2 else None
    _lib().mamba_conv_fwd(x.data_ptr(), branches[0].conv_weight.data_ptr(), _ptr(branches[0].conv_bias),
                          _ptr(second and second.conv_weight), _ptr(second and second.conv_bias), u.data_ptr(),
                          x.stride(0), batch, dim, length, branches[0].conv_weight.shape[-1], start, stop - start,
                          native.num_threads())
    return u


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@functools.lru_cache(maxsize=256)
def _validate_inner(u_sig: tuple | None, x_sig: tuple | None, xdbl_sigs: tuple, branch_sigs: tuple,
                    z_sig: tuple | None, out_sig: tuple) -> None:
    if (u_sig is None) == (x_sig is None):
        _fail("u", "and x: exactly one of them must be given")
    if u_sig is not None:
        if len(u_sig[0]) != 4:
            _fail("u", f"must be (branches, batch, dim, L), got {u_sig[0]}")
        _, batch, dim, length = u_sig[0]
        _check("u", u_sig, u_sig[0])
    else:
        if len(x_sig[0]) != 3:
            _fail("x", f"must be (batch, dim, L), got {x_sig[0]}")
        batch, dim, length = x_sig[0]
        _check("x", x_sig, x_sig[0], contiguous_from=1)
        _validate_conv(x_sig, tuple(sigs[4:] for sigs in branch_sigs))
    rank = branch_sigs[0][0][0][1]
    n_state = branch_sigs[0][2][0][1]
    for k, ((dt_w, dt_b, a_log, d_skip, _, _), xdbl) in enumerate(zip(branch_sigs, xdbl_sigs)):
        _check(f"dt_weight[{k}]", dt_w, (dim, rank))
        _check(f"dt_bias[{k}]", dt_b, (dim,))
        _check(f"A_log[{k}]", a_log, (dim, n_state))
        if d_skip is not None:
            _check(f"D[{k}]", d_skip, (dim,))
        _check(f"xdbl[{k}]", xdbl, (batch, length, rank + 2 * n_state))
    for name, sig in (("z", z_sig), ("out", out_sig)):
        if sig is not None:
            _check(name, sig, (batch, dim, length), contiguous_from=1)


def mamba_inner_cpu(u: torch.Tensor | None, xdbl: tuple[torch.Tensor, ...], branches: tuple[Branch, ...],
                    z: torch.Tensor | None = None, out: torch.Tensor | None = None,
                    scale: float = 1.0, x: torch.Tensor | None = None) -> torch.Tensor:
    """out = scale * silu(z) * sum_k y_k, y_k branch k's selective scan with its D skip:

        delta_k = softplus(dt_bias_k + dt_weight_k @ xdbl_k[..., :R])   (per step, never stored)
        h_t = exp(delta_t A_k) h_{t-1} + delta_t u_k[t] B_t,  A_k = -exp(A_log_k)
        y_k[t] = C_t . h_t + D_k u_k[t]

    over t ascending for k = 0 and descending for k = 1. u: (branches, batch, dim, L) from
    ``mamba_conv_cpu``, or None and x, the conv's input (batch, dim, L) with contiguous (dim, L)
    planes: the kernel then recomputes u a block of steps at a time (for long sequences, whose
    whole u is 2 x batch x dim x L floats). xdbl[k]: (batch, L, R + 2N) contiguous, x_proj's output
    token-major, whose columns are [dt_low | B | C]; z, out: (batch, dim, L) with contiguous
    (dim, L) planes, z None = no gate, out None = a new tensor; out may be z itself (each element
    of z is read before its place is written). Returns out."""
    given = u.shape[0] if u is not None else len(branches)
    if len(branches) != given or len(xdbl) != len(branches) or len(branches) not in (1, 2):
        raise ValueError(f"mamba_inner (cpu backend): u has {given} branches, xdbl {len(xdbl)} "
                         f"and branches {len(branches)}; all must be 1 or 2")
    _validate_inner(None if u is None else _signature(u)[0], None if x is None else _signature(x)[0],
                    _signature(*xdbl),
                    tuple(_signature(br.dt_weight, br.dt_bias, br.A_log, br.D, br.conv_weight, br.conv_bias)
                          for br in branches),
                    _signature(z)[0], None if out is None else _signature(out)[0])
    batch, dim, length = u.shape[1:] if u is not None else x.shape
    if out is None:
        out = xdbl[0].new_empty(batch, dim, length)
    args = []
    for k in range(2):
        if k < len(branches):
            br = branches[k]
            args += [None if u is None else u[k].data_ptr(), xdbl[k].data_ptr(), br.dt_weight.data_ptr(),
                     br.dt_bias.data_ptr(), br.A_log.data_ptr(), _ptr(br.D), br.conv_weight.data_ptr(),
                     _ptr(br.conv_bias)]
        else:
            args += [None] * 8
    status = _lib().mamba_inner_fwd(*args, _ptr(x), _ptr(z), out.data_ptr(), 0 if x is None else x.stride(0),
                                    0 if z is None else z.stride(0), out.stride(0), batch, dim, length,
                                    branches[0].dt_weight.shape[1], branches[0].A_log.shape[1],
                                    branches[0].conv_weight.shape[-1], scale, native.num_threads())
    if status != 0:
        raise MemoryError("mamba_inner (cpu backend): out of memory for the per-thread scratch")
    return out
