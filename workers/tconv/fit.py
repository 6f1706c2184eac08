"""Fit 3T (a base slice plus per-step affine warps) to any 3D kernel: ANALYSES.md §2 "beyond the paper".

For every filter W[o] (C_in, k_t, k_h, k_w) find K_0 and (s, r, tx, ty) per step such that the 3TConv
construction reproduces W[o] as well as possible; the relative residual ‖Ŵ−W‖/‖W‖ is the filter's
"3T-explainability". Two variants: plain 3T, and 3T with one gain g_t per slice (plain 3T cannot flip a
sign or change the temporal gain, so a temporal derivative [W, 0, −W] leaves 1/√2 ≈ 0.71).

Why it is fast:
- one bilinear warp of a k_h×k_w slice with zero padding reads 4 source pixels per output pixel (exactly
  what grid_sample computes), so slice t is S_t·K_0 with S_t = G_t…G_1, and a warp's derivative is a
  4-tap stencil applied to the previous slice, never a P×P×params tensor (P = k_h·k_w);
- the problem is separable: for fixed transforms K_0 is a least-squares solve (variable projection), so
  Levenberg–Marquardt searches only the 4(k_t−1) (+k_t gains) transform numbers, with Kaufman's Jacobian
  applied to K_0's columns (at most P of them: K_0 is rotated onto its row space);
- input channels are first compressed to at most k_t·P columns (a QR), all filters of a layer and all
  their starts are one batch, a rejected LM step reuses its Jacobian, and rows stop once converged;
- every start runs a short screening stage, after which only each filter's best start goes on (the
  other starts cost a few iterations, not the whole budget).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from workers.tconv.layer import build_kernel

ProgressFn = Callable[[float], None]
Tensor = torch.Tensor

# Restart draws (besides the fixed starts): log-scale, rotation (rad) and translation (normalised units)
# uniform in ±these. Wide translations let a fit discover that content leaves the kernel.
_RESTART_LOG_SCALE = 0.25
_RESTART_ROTATION = 0.5
_RESTART_TRANSLATION = 1.5
# Every start is nudged by this much (N(0, 1) times it), so that no two starts of a filter coincide and
# no start sits exactly on a kink of bilinear interpolation (where a one-sided derivative is taken).
_START_JITTER = 1e-3
# Best grid points per step refined by LM in the registration start (the grid's best alone can sit in the wrong basin).
_REGISTRATION_CANDIDATES = 4
# Deterministic starts before the random ones: identity, slice registration, content leaving the window.
_FIXED_STARTS = 3
# LM iterations every start runs before only each filter's best start continues. Measured on noise and
# planted layers (bench/tconv_fit.py): the start that leads after 8 iterations ends best or within 1e-3
# in residual of the best; planted kernels are found by their registration start within 2-3 iterations.
SCREEN_STEPS = 8
# Successive halving within the screening: (iterations run by the end of the stage, starts per filter kept
# after it). The last stage ends at the screening's end and keeps one.
_SCREEN_SCHEDULE: tuple[tuple[int, int], ...] = ((3, 3), (1_000_000, 1))
# Levenberg–Marquardt damping: start, shrink on success, grow on failure, give up above.
_LAMBDA_START, _LAMBDA_DOWN, _LAMBDA_UP, _LAMBDA_MAX = 1e-3, 3.0, 4.0, 1e8
# A row stops when an accepted step gains less than _STALL of ‖W‖², when the last _WINDOW iterations
# together lowered its cost by less than _WINDOW_DROP of that cost (its relative residual then moves by
# less than 1e-3 of itself per _WINDOW iterations: LM crawling along the kinks of bilinear interpolation,
# which on noise kernels went on for 100+ iterations for a last 0.1 % of residual), or at an exact fit
# (cost below _EXACT of ‖W‖²). On a 64×64×3×3×3 noise layer, _WINDOW = 8 and _WINDOW_DROP = 1e-3 gave a
# mean residual of 0.7915 in 1.7× the time of these settings (0.7920); planted 3T kernels converge
# quadratically to the exact fit either way.
_STALL = 1e-10
_WINDOW, _WINDOW_DROP = 5, 2e-3
_EXACT = 1e-24
# |Jᵀr| below this share of ‖W‖² is a stationary point: nothing for LM to follow (a start whose content
# left the zero-padded window sits on a plateau; λ would otherwise climb for ~18 iterations to give up).
_FLAT = 1e-13
# From this many running rows on, an LM iteration evaluates every trial's cost and then the Jacobian of the
# accepted trials only (work dominates); below it, one pass with the Jacobian (per-operation cost dominates).
_TWO_PASS_ROWS = 32
# Bound on the elements of the per-chunk working tensors (rows × per-row sizes): filters are fitted in
# chunks below it, so that huge layers stay in memory.
_CHUNK_ELEMENTS = 24_000_000


@dataclass
class ThreeTFit:
    """Per-filter fit of one layer, in the authors' layouts (numpy, float64).

    scale, rotate (radians), translate_x, translate_y: (k_t−1, C_out) like `TConv3d`'s parameters;
    gain: (k_t, C_out) for the gain variant (normalised: largest |g_t| is 1, first non-zero g_t > 0), else None;
    base: (C_out, C_in, k_h, k_w), the fitted K_0; residual: (C_out,) relative residual, NaN for an
    all-zero filter (nothing to explain).
    """

    scale: np.ndarray
    rotate: np.ndarray
    translate_x: np.ndarray
    translate_y: np.ndarray
    base: np.ndarray
    residual: np.ndarray
    gain: np.ndarray | None = None

    def kernel(self) -> torch.Tensor:
        """The reconstruction Ŵ (C_out, C_in, k_t, k_h, k_w) that these numbers describe."""
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        w = build_kernel(
            as_t(self.base)[:, :, None], as_t(self.scale), as_t(self.rotate), as_t(self.translate_x), as_t(self.translate_y)
        )
        if self.gain is not None:
            w = w * as_t(self.gain).T[:, None, :, None, None]
        return w


def sampling_matrix(scale: Tensor, rotate: Tensor, translate_x: Tensor, translate_y: Tensor, k_h: int, k_w: int) -> Tensor:
    """(..., P, P) matrix G with warped = G @ slice (pixels row-major) for parameters of any batch shape:
    grid_sample(bilinear, zeros, align_corners=True) through affine_grid(s·R(r)·[I | t])."""
    phi_step = torch.stack([torch.log(scale), rotate, translate_x, translate_y], dim=-1)
    warp = _taps(phi_step.reshape(-1, 4), k_h, k_w, derivative=False).dense()
    return warp.reshape(*scale.shape, k_h * k_w, k_h * k_w)


class _Taps(NamedTuple):
    """One warp per row as bilinear taps: output pixel p reads source pixels index[b, p, :] (P = a zero
    pixel outside the slice) with weight[b, p, :]; slope (B, P, 4, 4): d weight[b, p, q] / d [log s, r, tx, ty][k]
    at [b, p, k, q]."""

    index: Tensor
    weight: Tensor
    slope: Tensor | None

    def dense(self) -> Tensor:
        """(B, P, P): the warp as a matrix."""
        b, p, _ = self.weight.shape
        full = self.weight.new_zeros((b, p, p + 1)).scatter_add_(2, self.index, self.weight)
        return full[:, :, :p]

    def gather(self, values: Tensor) -> Tensor:
        """(B, P, 4, c): each output pixel's 4 source rows of values (B, P, c); the zero pixel reads 0."""
        b, p, c = values.shape
        padded = torch.cat([values, values.new_zeros((b, 1, c))], dim=1)
        return padded.gather(1, self.index.reshape(b, p * 4, 1).expand(b, p * 4, c)).reshape(b, p, 4, c)

    def derivative(self, values: Tensor) -> Tensor:
        """(B, P, 4, c): d(G @ values)/d[log s, r, tx, ty] for values (B, P, c) held fixed."""
        assert self.slope is not None
        return torch.einsum("bpkq,bpqc->bpkc", self.slope, self.gather(values))


def _taps(phi_step: Tensor, k_h: int, k_w: int, derivative: bool) -> _Taps:
    """The bilinear taps of one step for rows of [log s, r, tx, ty] (B, 4).

    Output pixel p (normalised (x, y)) reads the source at q = s·R(r)·(p + t), in source pixel units
    u = (q_x + 1)(k_w − 1)/2, v = (q_y + 1)(k_h − 1)/2, from the 4 pixels around (u, v) with bilinear
    weights; pixels outside the slice read zero. The derivative is taken with the floor fixed (one-sided
    at whole pixels, where bilinear interpolation has its kinks), so it never vanishes there.
    """
    grid = _grid(k_h, k_w, phi_step.dtype, phi_step.device)
    p = k_h * k_w
    log_s, rot, tx, ty = (v[:, None] for v in phi_step.unbind(-1))
    s, c, sn = torch.exp(log_s), torch.cos(rot), torch.sin(rot)
    ax, ay = grid.x + tx, grid.y + ty
    qx, qy = s * (c * ax - sn * ay), s * (sn * ax + c * ay)  # (B, P)
    half_w, half_h = (k_w - 1) / 2.0, (k_h - 1) / 2.0
    # Clamped so that floor stays a small integer; beyond the slice every tap reads the zero pixel anyway.
    u = ((qx + 1.0) * half_w).clamp(-2.0, k_w + 1.0)
    v = ((qy + 1.0) * half_h).clamp(-2.0, k_h + 1.0)
    x0, y0 = torch.floor(u), torch.floor(v)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    xs, ys = x0[..., None] + grid.dx, y0[..., None] + grid.dy  # (B, P, 4): taps (0,0), (1,0), (0,1), (1,1)
    wx = grid.dx * fx + (1 - grid.dx) * (1 - fx)
    wy = grid.dy * fy + (1 - grid.dy) * (1 - fy)
    valid = (xs >= 0) & (xs <= k_w - 1) & (ys >= 0) & (ys <= k_h - 1)
    index = torch.where(valid, ys * k_w + xs, float(p)).nan_to_num_(nan=float(p)).to(torch.int64)
    if not derivative:
        return _Taps(index, wx * wy, None)
    sc, ss = (s * c).expand_as(qx), (s * sn).expand_as(qx)
    du = torch.stack([qx, -qy, sc, -ss], dim=-1) * half_w  # (B, P, 4): d u / d[log s, r, tx, ty]
    dv = torch.stack([qy, qx, ss, sc], dim=-1) * half_h
    slope = (wy * grid.sign_x)[:, :, None] * du[..., None] + (wx * grid.sign_y)[:, :, None] * dv[..., None]
    return _Taps(index, wx * wy, slope)


class _Grid(NamedTuple):
    """Normalised (x, y) of each output pixel, row-major (P,); tap offsets dx, dy and d weight/du, /dv signs (4,)."""

    x: Tensor
    y: Tensor
    dx: Tensor
    dy: Tensor
    sign_x: Tensor
    sign_y: Tensor


@functools.lru_cache(maxsize=64)
def _grid(k_h: int, k_w: int, dtype: torch.dtype, device: torch.device) -> _Grid:
    ys = torch.linspace(-1.0, 1.0, k_h, dtype=dtype, device=device) if k_h > 1 else torch.zeros(1, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, k_w, dtype=dtype, device=device) if k_w > 1 else torch.zeros(1, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    dx = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=dtype, device=device)
    dy = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=device)
    return _Grid(gx.reshape(-1), gy.reshape(-1), dx, dy, 2 * dx - 1, 2 * dy - 1)


class _Evaluation(NamedTuple):
    """cost ‖F K − W‖² at the least-squares K (B, P, r); with the Jacobian: JᵀJ (B, n, n) and Jᵀr (B, n)."""

    cost: Tensor
    base: Tensor
    jtj: Tensor | None = None
    jtr: Tensor | None = None


def _slices(phi: Tensor, k_t: int, k_h: int, k_w: int, derivative: bool) -> tuple[Tensor, list[_Taps], list[Tensor]]:
    """S_1..S_{k_t−1} stacked (B, (k_t−1)·P, P), the maps K_0 -> slice t (S_t = G_t S_{t−1}, S_0 = I is
    implicit), each step's taps and each step's warp G_t (B, P, P)."""
    taps = [_taps(phi[:, 4 * step : 4 * step + 4], k_h, k_w, derivative) for step in range(k_t - 1)]
    warps = [step_taps.dense() for step_taps in taps]
    mats: list[Tensor] = []
    for warp in warps:
        mats.append(warp if not mats else warp @ mats[-1])
    return torch.cat(mats, dim=1), taps, warps


class _Projection(NamedTuple):
    """Variable projection at some transforms, kept so that the Jacobian can follow for any subset of rows."""

    cost: Tensor
    base: Tensor
    rest: Tensor
    taps: list[_Taps]
    warps: list[Tensor]
    gains: Tensor | None
    f_rest: Tensor
    chol: Tensor
    res_first: Tensor
    res_later: Tensor

    def pick(self, index: Tensor) -> "_Projection":
        taps = [_Taps(t.index[index], t.weight[index], None if t.slope is None else t.slope[index]) for t in self.taps]
        gains = None if self.gains is None else self.gains[index]
        return self._replace(
            cost=self.cost[index], base=self.base[index], rest=self.rest[index], taps=taps,
            warps=[w[index] for w in self.warps], gains=gains, f_rest=self.f_rest[index], chol=self.chol[index],
            res_first=self.res_first[index], res_later=self.res_later[index],
        )


def _evaluate(phi: Tensor, target: Tensor, k_t: int, k_h: int, k_w: int, gain: bool, jacobian: bool) -> _Evaluation:
    """The cost and K at transforms phi (B, n) for targets (B, k_t, P, r); with JᵀJ and Jᵀr when `jacobian`."""
    projection = _project(phi, target, k_t, k_h, k_w, gain, slopes=jacobian)
    if not jacobian:
        return _Evaluation(projection.cost, projection.base)
    return _jacobian(projection, phi.shape[1], k_t)


def _project(phi: Tensor, target: Tensor, k_t: int, k_h: int, k_w: int, gain: bool, slopes: bool) -> _Projection:
    """Variable projection at transforms phi (B, n) for targets (B, k_t, P, r).

    phi rows = [log s, r, tx, ty] for steps 1..k_t−1, then (gain variant) g_0..g_{k_t−1}; F_t = g_t S_t.
    K = (FᵀF)⁻¹FᵀW; the cost is the exact ‖F K − W‖². `slopes` keeps the warps' derivatives for _jacobian.
    """
    b, t_len, p, r = target.shape
    steps = t_len - 1
    rest, taps, warps = _slices(phi, k_t, k_h, k_w, slopes)  # slices 1.. (B, steps·P, P)
    gains = phi[:, 4 * steps :] if gain else None
    if gains is not None:
        f_rest = rest * gains[:, 1:].repeat_interleave(p, dim=1)[:, :, None]
        head = gains[:, :1].pow(2)  # (B, 1): g_0² (slice 0 is g_0·I)
    else:
        f_rest, head = rest, torch.ones((b, 1), dtype=phi.dtype, device=phi.device)
    normal = f_rest.transpose(1, 2) @ f_rest
    diagonal = normal.diagonal(dim1=-2, dim2=-1)
    diagonal += head + 1e-12 * (diagonal.sum(-1, keepdim=True) + p * head).clamp_min(1e-30)  # a relative ridge: vanishing gains stay solvable
    chol, info = torch.linalg.cholesky_ex(normal)
    first, later = target[:, 0], target[:, 1:].reshape(b, steps * p, r)
    g0 = gains[:, :1, None] if gains is not None else None
    rhs = f_rest.transpose(1, 2) @ later + (first if g0 is None else g0 * first)
    base = torch.cholesky_solve(rhs, chol)  # (B, P, r)
    res_first = (base if g0 is None else g0 * base) - first
    res_later = f_rest @ base - later
    cost = res_first.pow(2).sum((1, 2)) + res_later.pow(2).sum((1, 2))
    cost = torch.where(info == 0, cost, torch.inf)
    return _Projection(cost, base, rest, taps, warps, gains, f_rest, chol, res_first, res_later)


def _jacobian(projection: _Projection, n: int, k_t: int) -> _Evaluation:
    """JᵀJ (B, n, n) and Jᵀr (B, n) at a projection made with slopes.

    Kaufman's Jacobian J_j = P_⊥ ∂F_j K: with X_j = ∂F_j K, JᵀJ = XᵀX − (FᵀX)ᵀ(FᵀF)⁻¹(FᵀX) and
    Jᵀr = Xᵀ(F K − W) (the residual is orthogonal to F's range). ∂F_j K is built slice by slice: a step's
    derivative stencil on the previous slice, carried through the later warps. K's columns are first
    rotated onto its row space, so at most P columns remain.
    """
    cost, base, rest, taps, warps, gains, f_rest, chol, res_first, res_later = projection
    b, p, r = base.shape
    t_len, steps = k_t, k_t - 1
    dtype, device = base.dtype, base.device
    g0 = gains[:, :1, None] if gains is not None else None
    if r > p:  # K = R₁ᵀQ₁ᵀ: work with R₁ᵀ (P columns) and the residual's part along Q₁ (inner products unchanged)
        q1, r1 = torch.linalg.qr(base.transpose(1, 2))
        columns, res_first, res_later = r1.transpose(1, 2), res_first @ q1, res_later @ q1
    else:
        columns = base
    c = columns.shape[-1]
    images = (rest @ columns).reshape(b, steps, p, c)  # S_t K for t ≥ 1
    res_later = res_later.reshape(b, steps, p * c)
    jtj = base.new_zeros((b, n, n))
    jtr = base.new_zeros((b, n))
    projected = base.new_zeros((b, p, n, c))  # FᵀX
    if gains is not None:  # slice 0 = g_0·K: only the g_0 column reaches it
        g0_col = 4 * steps
        jtj[:, g0_col, g0_col] = columns.pow(2).sum((1, 2))
        jtr[:, g0_col] = (columns * res_first).sum((1, 2))
        projected[:, :, g0_col] = g0 * columns
    carried = base.new_zeros((b, p, 0, c))  # d(S_t K)/d(motion of steps ≤ t), pixel-major (B, P, 4t, c)
    for t in range(1, t_len):
        if carried.shape[2]:
            carried = (warps[t - 1] @ carried.reshape(b, p, -1)).reshape(b, p, -1, c)
        fresh = taps[t - 1].derivative(images[:, t - 2] if t > 1 else columns)  # dG_t · S_{t−1} K
        carried = torch.cat([carried, fresh], dim=2)
        cols, index = carried, torch.arange(4 * t, device=device)
        if gains is not None:  # X for slice t: g_t · d(S_t K), and the g_t column S_t K
            cols = torch.cat([carried * gains[:, t, None, None, None], images[:, t - 1, :, None]], dim=2)
            index = torch.cat([index, torch.tensor([4 * steps + t], device=device)])
        k = cols.shape[2]
        flat = cols.transpose(1, 2).reshape(b, k, p * c)
        block = flat @ flat.transpose(1, 2)
        grad = (flat @ res_later[:, t - 1, :, None])[..., 0]
        f_t = rest[:, (t - 1) * p : t * p] if gains is None else f_rest[:, (t - 1) * p : t * p]
        reach = (f_t.transpose(1, 2) @ cols.reshape(b, p, k * c)).reshape(b, p, k, c)
        if gains is None:
            jtj[:, :k, :k] += block
            jtr[:, :k] += grad
            projected[:, :, :k] += reach
        else:
            jtj[:, index[:, None], index] += block
            jtr[:, index] += grad
            projected[:, :, index] += reach
    whitened = torch.linalg.solve_triangular(chol, projected.reshape(b, p, n * c), upper=False)
    whitened = whitened.reshape(b, p, n, c).transpose(1, 2).reshape(b, n, p * c)
    jtj = jtj - whitened @ whitened.transpose(1, 2)
    return _Evaluation(cost, base, 0.5 * (jtj + jtj.transpose(1, 2)), jtr)


class _Rows(NamedTuple):
    """LM state, one row per start of a filter: transforms, the cost there, the damping λ, and JᵀJ, Jᵀr there."""

    phi: Tensor
    cost: Tensor
    lam: Tensor
    jtj: Tensor
    jtr: Tensor

    def pick(self, index: Tensor) -> "_Rows":
        return _Rows(*(t[index] for t in self))


def _start(phi: Tensor, target: Tensor, k_t: int, k_h: int, k_w: int, gain: bool) -> _Rows:
    """Rows at `phi`, with λ at its start value."""
    ev = _evaluate(phi, target, k_t, k_h, k_w, gain, jacobian=True)
    assert ev.jtj is not None and ev.jtr is not None
    lam = torch.full_like(ev.cost, _LAMBDA_START)
    return _Rows(phi, ev.cost, lam, ev.jtj, ev.jtr)


def _levenberg_marquardt(
    rows: _Rows, target: Tensor, k_t: int, k_h: int, k_w: int, gain: bool, steps: int,
    progress: ProgressFn | None = None, final_jacobians: bool = True,
) -> tuple[_Rows, int]:
    """Batched variable-projection LM from `rows` (each row one start of one filter, targets (rows, k_t, P, r)).
    Each iteration evaluates the trial point with its Jacobian in one pass (a rejected trial keeps the old
    Jacobian, only λ changes). A row stops once converged (_STALL, _WINDOW), at a stationary point (_FLAT),
    when λ exceeds _LAMBDA_MAX, or at an exact fit; the working set shrinks to the rows still running.
    `final_jacobians=False` (a caller that keeps only transforms and costs) leaves JᵀJ, Jᵀr of the rows where
    they stopped stale instead of building them: with many rows that skips each row's last Jacobian.

    Returns (the rows where they ended, iterations run)."""
    out = _Rows(*(t.clone() for t in rows))
    n = rows.phi.shape[1]
    norm2 = target.pow(2).sum((1, 2, 3)).clamp_min(1e-300)
    keep = torch.isfinite(rows.cost) & (rows.cost > _EXACT * norm2) & (rows.jtr.abs().amax(1) > _FLAT * norm2)
    idx = torch.nonzero(keep).flatten()
    live, a_target, a_norm = rows.pick(idx), target[idx], norm2[idx]
    ring = live.cost[None]  # costs of the last _WINDOW iterations (oldest first)
    eye_n = torch.eye(n, dtype=rows.phi.dtype, device=rows.phi.device)
    iterations = 0
    for it in range(steps):
        if idx.numel() == 0:
            break
        iterations = it + 1
        phi, cost, lam, jtj, jtr = live
        damping = lam[:, None, None] * (torch.diag_embed(jtj.diagonal(dim1=-2, dim2=-1)) + 1e-9 * eye_n)
        delta, _info = torch.linalg.solve_ex(jtj + damping, -jtr[..., None])
        trial = phi + delta[..., 0]
        if idx.numel() >= _TWO_PASS_ROWS:  # many rows: the work is in the Jacobians, build them where accepted only
            ev = _project(trial, a_target, k_t, k_h, k_w, gain, slopes=True)
            better = (ev.cost < cost) & torch.isfinite(ev.cost)
            stopping = _converged(it, steps, lam, better, cost, ev.cost, a_norm, ring)
            # A row that stops here never uses the Jacobian at its end point, unless the caller goes on from it.
            moved = torch.nonzero(better if final_jacobians else better & ~stopping).flatten()
            jtj, jtr = jtj.clone(), jtr.clone()
            if moved.numel():
                at = _jacobian(ev.pick(moved), n, k_t)
                assert at.jtj is not None and at.jtr is not None
                jtj[moved], jtr[moved] = at.jtj, at.jtr
        else:  # few rows: each operation's fixed cost dominates, one pass with the Jacobian
            ev = _evaluate(trial, a_target, k_t, k_h, k_w, gain, jacobian=True)
            assert ev.jtj is not None and ev.jtr is not None
            better = (ev.cost < cost) & torch.isfinite(ev.cost)
            stopping = _converged(it, steps, lam, better, cost, ev.cost, a_norm, ring)
            jtj = torch.where(better[:, None, None], ev.jtj, jtj)
            jtr = torch.where(better[:, None], ev.jtr, jtr)
        live = _Rows(
            torch.where(better[:, None], trial, phi),
            torch.where(better, ev.cost, cost),
            torch.where(better, lam / _LAMBDA_DOWN, lam * _LAMBDA_UP).clamp_min(1e-12),
            jtj,
            jtr,
        )
        done = stopping | (live.jtr.abs().amax(1) <= _FLAT * a_norm)  # a stationary point, e.g. content moved out of the window
        cost = live.cost
        ring = torch.cat([ring[-_WINDOW:], cost[None]])
        if progress is not None:
            progress((it + 1) / steps)
        if bool(done.any()):
            finished = idx[done]
            for whole, part in zip(out, live):
                whole[finished] = part[done]
            running = ~done
            idx, live, a_target, a_norm, ring = idx[running], live.pick(running), a_target[running], a_norm[running], ring[:, running]
    for whole, part in zip(out, live):
        whole[idx] = part
    return out, iterations


def _converged(
    it: int, steps: int, lam: Tensor, better: Tensor, cost: Tensor, trial_cost: Tensor, norm2: Tensor, ring: Tensor
) -> Tensor:
    """Rows that stop after iteration `it` (before the stationary-point test, which needs the new Jᵀr): the last
    iteration, λ past _LAMBDA_MAX, an exact fit, a stalled accepted step, or too little drop over _WINDOW."""
    new_cost = torch.where(better, trial_cost, cost)
    new_lam = torch.where(better, lam / _LAMBDA_DOWN, lam * _LAMBDA_UP).clamp_min(1e-12)
    gained = torch.where(better, cost - trial_cost, torch.zeros_like(cost))
    done = (new_lam >= _LAMBDA_MAX) | (new_cost <= _EXACT * norm2) | (better & (gained <= _STALL * norm2))
    if ring.shape[0] + 1 > _WINDOW:
        done |= (ring[-_WINDOW] - new_cost) <= _WINDOW_DROP * new_cost
    if it + 1 >= steps:
        done = torch.ones_like(done)
    return done


def _registration_start(target: Tensor, k_t: int, k_h: int, k_w: int, generator: torch.Generator) -> Tensor:
    """Per step, the transform that best maps slice t−1 onto slice t: the best points of a grid over
    (log s, r, tx, ty) (scored through P×P Gram matrices, so nothing scales with the channels), refined by
    LM on the two-slice problem. For a kernel that is 3T this lands next to the answer, where the joint
    fit from identity can stall between the kinks of bilinear interpolation."""
    dtype, device = target.dtype, target.device
    filters = target.shape[0]
    shifts = torch.linspace(-1.0, 1.0, 9, dtype=dtype, device=device)
    angles = torch.tensor([-0.3, -0.15, 0.0, 0.15, 0.3], dtype=dtype, device=device)
    logs = torch.tensor([-0.15, 0.0, 0.15], dtype=dtype, device=device)
    grid = torch.cartesian_prod(logs, angles, shifts, shifts)  # (Q, 4)
    warps = _taps(grid, k_h, k_w, derivative=False).dense()  # (Q, P, P)
    warp_gram = warps.transpose(1, 2) @ warps
    p = k_h * k_w
    tops = []
    for step in range(k_t - 1):
        prev, nxt = target[:, step], target[:, step + 1]  # (F, P, r)
        dot = warps.reshape(-1, p * p) @ (nxt @ prev.transpose(1, 2)).reshape(filters, p * p).T  # (Q, F)
        energy = warp_gram.reshape(-1, p * p) @ (prev @ prev.transpose(1, 2)).reshape(filters, p * p).T
        score = dot.pow(2) / energy.clamp_min(1e-300)  # energy explained with the best gain
        tops.append(grid[score.topk(_REGISTRATION_CANDIDATES, dim=0).indices])  # (K, F, 4)
    cands = torch.stack(tops, dim=2)  # (K, F, steps, 4)
    start = cands.reshape(-1, 4)  # rows: candidate, filter, step
    start = start + _START_JITTER * torch.randn(start.shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    pairs = torch.stack([target[:, :-1], target[:, 1:]], dim=2).reshape(filters * (k_t - 1), 2, p, -1)
    pairs = pairs.repeat(_REGISTRATION_CANDIDATES, 1, 1, 1)
    rows = filters * (k_t - 1)
    # LM iterations: k_t − 1 (2 for a 3-frame kernel): the joint fit refines the rest.
    budget = max(1, k_t - 1)
    refined, _ = _levenberg_marquardt(
        _start(start, pairs, 2, k_h, k_w, False), pairs, 2, k_h, k_w, False, budget, final_jacobians=False
    )
    pick = refined.cost.reshape(_REGISTRATION_CANDIDATES, rows).argmin(0) * rows + torch.arange(rows, device=device)
    return refined.phi[pick].reshape(filters, 4 * (k_t - 1))


def _vanishing_shift(k_h: int, k_w: int) -> tuple[float, float]:
    """A translation (normalised units) that moves a whole k_h×k_w slice out of its zero-padded window."""
    beyond = lambda k: 0.0 if k <= 1 else 2.0 + 2.0 / (k - 1) + 0.5  # noqa: E731
    return (beyond(k_w), 0.0) if k_w > 1 else (0.0, beyond(k_h))


def _initial_parameters(
    target: Tensor, restarts: int, k_t: int, k_h: int, k_w: int, gain: bool, generator: torch.Generator,
    warm: Tensor | None = None,
) -> Tensor:
    """(restarts+3)·F starting points: identity, slice registration, "content leaves after slice 0", then
    random draws. The third start matters because once content is shifted out of the zero-padded slice
    the loss is flat, so no local search finds that mode (a temporal derivative [W, 0, −W] needs it).
    The identity and "content leaves" starts take gains from the rank-1 SVD of the slices (ignoring
    motion), so a sign flip starts where it belongs; the other starts begin at unit gains. `warm`
    (F, 4(k_t−1)) transforms, e.g. the plain fit's, are one more start with unit gains."""
    filters = target.shape[0]
    steps = k_t - 1
    dtype, device = target.dtype, target.device
    draws = torch.rand((restarts, filters, steps, 4), generator=generator, dtype=torch.float64) * 2.0 - 1.0
    spread = torch.tensor([_RESTART_LOG_SCALE, _RESTART_ROTATION, _RESTART_TRANSLATION, _RESTART_TRANSLATION], dtype=torch.float64)
    random = (draws * spread).to(device=device, dtype=dtype).reshape(restarts, filters, 4 * steps)
    identity = torch.zeros((1, filters, 4 * steps), dtype=dtype, device=device)
    registered = _registration_start(target, k_t, k_h, k_w, generator)[None]
    vanish = identity.clone()
    vanish[..., 2:4] = torch.tensor(_vanishing_shift(k_h, k_w), dtype=dtype, device=device)
    blocks = [identity, registered, vanish, random] + ([warm[None].to(device=device, dtype=dtype)] if warm is not None else [])
    motion = torch.cat(blocks).reshape(-1, 4 * steps)
    jitter = torch.randn(motion.shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    motion = motion + _START_JITTER * jitter
    if not gain:
        return motion
    u, _s, _vh = torch.linalg.svd(target.reshape(filters, k_t, -1), full_matrices=False)
    lead = u[:, :, 0]
    sign = torch.sign(lead.gather(1, lead.abs().argmax(1, keepdim=True)))
    g = lead * sign * math.sqrt(k_t)
    g = torch.where(g.abs().sum(1, keepdim=True) > 0, g, torch.ones_like(g))
    ones = torch.ones_like(g)
    # Rows follow `blocks`: identity and "content leaves" take the SVD gains, the others unit gains.
    gains = [g, ones, g] + [ones] * (restarts + (warm is not None))
    return torch.cat([motion, torch.cat(gains)], dim=1)


def _screen(
    phi: Tensor, target: Tensor, starts: int, k_t: int, k_h: int, k_w: int, gain: bool, screen: int
) -> tuple[_Rows, int]:
    """Successive halving over each filter's starts (rows start·F + filter): every start runs the first stage
    of _SCREEN_SCHEDULE, the best per filter the next, until `screen` iterations; returns each filter's best
    row and the iterations spent."""
    filters = target.shape[0]
    columns = torch.arange(filters, device=phi.device)
    rows = _start(phi, target.repeat(starts, 1, 1, 1), k_t, k_h, k_w, gain)
    keep, done = starts, 0
    for stage_end, survivors in _SCREEN_SCHEDULE:
        stop = min(stage_end, screen)
        if stop > done:
            rows, _ = _levenberg_marquardt(rows, target.repeat(keep, 1, 1, 1), k_t, k_h, k_w, gain, stop - done)
            done = stop
        survivors = 1 if done >= screen else min(survivors, keep)
        order = rows.cost.reshape(keep, filters).argsort(0)[:survivors]  # (survivors, F) start indices
        rows, keep = rows.pick((order * filters + columns).reshape(-1)), survivors
        if done >= screen:
            break
    return rows, done


def fit_3t(
    weight: torch.Tensor,
    *,
    gain: bool = False,
    restarts: int = 4,
    steps: int = 200,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    warm_start: ThreeTFit | None = None,
    screen_steps: int = SCREEN_STEPS,
) -> ThreeTFit:
    """Fit every filter of a Conv3d weight (C_out, C_in, k_t, k_h, k_w) with 3T, all filters at once.

    restarts: random starts besides the three fixed ones (identity, slice registration, content leaving
    the window); warm_start: one more start from another fit's transforms (give the gain variant the
    plain fit, so it never ends worse); steps: LM iterations at most (rows stop early once converged);
    screen_steps: iterations every start runs before only each filter's best start continues.
    Runs in float64 on `device` (default: the weight's).
    """
    if weight.dim() != 5:
        raise ValueError(f"expected a 5D Conv3d weight, got shape {tuple(weight.shape)}")
    if int(weight.shape[2]) < 2:
        raise ValueError("a kernel with one time step has no temporal transform to fit")
    device = torch.device(device) if device is not None else weight.device
    with _one_thread(device):
        return _fit(weight, gain, restarts, steps, seed, device, progress, warm_start, screen_steps)


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """CPU fits run on one thread: their matrices are tiny, so intra-op threads gain nothing, and on cores
    shared with other processes they lose badly (a 64×64×3×3×3 layer took 85 s on 2 threads against 2.6 s
    on one, measured on this project's 2-core machine under load)."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(
    weight: torch.Tensor, gain: bool, restarts: int, steps: int, seed: int, device: torch.device,
    progress: ProgressFn | None, warm_start: ThreeTFit | None, screen_steps: int,
) -> ThreeTFit:
    c_out, c_in, k_t, k_h, k_w = (int(s) for s in weight.shape)
    w = weight.detach().to(device=device, dtype=torch.float64)
    p = k_h * k_w
    # (C_out, T·P, C_in): rows are (t, y, x), columns input channels; compress columns (Wᵀ = Q·R).
    rows = w.permute(0, 2, 3, 4, 1).reshape(c_out, k_t * p, c_in)
    if c_in > k_t * p:
        q, r = torch.linalg.qr(rows.transpose(1, 2), mode="reduced")  # q (C_out, C_in, T·P)
        compact = r.transpose(1, 2)
    else:
        q, compact = None, rows
    cols = compact.shape[-1]
    target_all = compact.reshape(c_out, k_t, p, cols)
    generator = torch.Generator().manual_seed(int(seed))
    warm = None
    if warm_start is not None:
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device).T  # (C_out, steps)  # noqa: E731
        parts = [torch.log(as_t(warm_start.scale)), as_t(warm_start.rotate), as_t(warm_start.translate_x), as_t(warm_start.translate_y)]
        warm = torch.stack(parts, dim=-1).reshape(c_out, 4 * (k_t - 1))
    n = 4 * (k_t - 1) + (k_t if gain else 0)
    starts = restarts + _FIXED_STARTS + (warm is not None)
    c = min(cols, p)
    per_row = 3 * n * k_t * p * c + 4 * k_t * p * p + 3 * k_t * p * cols + 4 * n * n
    chunk = max(1, min(c_out, _CHUNK_ELEMENTS // max(starts * per_row, 1)))
    screen = max(0, min(int(screen_steps), int(steps)))
    phis, bases, costs = [], [], []
    for start in range(0, c_out, chunk):
        stop = min(c_out, start + chunk)
        filters = stop - start
        target = target_all[start:stop]
        warm_rows = warm[start:stop] if warm is not None else None
        phi0 = _initial_parameters(target, restarts, k_t, k_h, k_w, gain, generator, warm_rows)
        done = 0

        def report(f: float, a: int = start, z: int = stop) -> None:
            if progress is not None:
                progress((a + min(1.0, (done + f * (steps - done)) / steps) * (z - a)) / c_out)

        if screen and starts > 1:
            state, done = _screen(phi0, target, starts, k_t, k_h, k_w, gain, screen)
        else:  # no screening: every start runs to the end, the best is kept afterwards
            target = target.repeat(starts, 1, 1, 1)
            state = _start(phi0, target, k_t, k_h, k_w, gain)
        state, _ = _levenberg_marquardt(state, target, k_t, k_h, k_w, gain, steps - done, report, final_jacobians=False)
        final = _evaluate(state.phi, target, k_t, k_h, k_w, gain, jacobian=False)
        phi, cost, base = state.phi, final.cost, final.base
        if phi.shape[0] != filters:
            pick = cost.reshape(-1, filters).argmin(0) * filters + torch.arange(filters, device=device)
            phi, cost, base = phi[pick], cost[pick], base[pick]
        phis.append(phi)
        bases.append(base)
        costs.append(cost)
    phi, base, cost = torch.cat(phis), torch.cat(bases), torch.cat(costs)
    if q is not None:
        base = base @ q.transpose(1, 2)  # back to (C_out, P, C_in)
    norm2 = rows.pow(2).sum((1, 2))
    residual = torch.where(norm2 > 0, (cost / norm2.clamp_min(1e-300)).clamp_min(0).sqrt(), torch.full_like(cost, float("nan")))
    steps_n = k_t - 1
    motion = phi[:, : 4 * steps_n].reshape(c_out, steps_n, 4)
    gains = None
    if gain:
        g = phi[:, 4 * steps_n :]
        # Canonical form: max |g_t| = 1 and the first clearly non-zero gain positive (K_0 absorbs the factor).
        size = g.abs().max(1, keepdim=True).values
        first = (g.abs() > 1e-3 * size).to(torch.int64).argmax(1, keepdim=True)
        lead = size * torch.sign(g.gather(1, first))
        lead = torch.where(lead == 0, torch.ones_like(lead), lead)
        gains = (g / lead).T.cpu().numpy()
        base = base * lead[:, :, None]
    rotation = torch.remainder(motion[..., 1] + math.pi, 2 * math.pi) - math.pi
    base_out = base.reshape(c_out, k_h, k_w, c_in).permute(0, 3, 1, 2)
    return ThreeTFit(
        scale=torch.exp(motion[..., 0]).T.cpu().numpy(),
        rotate=rotation.T.cpu().numpy(),
        translate_x=motion[..., 2].T.cpu().numpy(),
        translate_y=motion[..., 3].T.cpu().numpy(),
        base=base_out.cpu().numpy(),
        residual=residual.cpu().numpy(),
        gain=gains,
    )
