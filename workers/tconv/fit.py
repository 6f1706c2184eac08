"""Fit 3T (a base slice plus per-step affine warps) to any 3D kernel: ANALYSES.md §2 "beyond the paper".

For every filter W[o] (C_in, k_t, k_h, k_w) find K_0 and (s, r, tx, ty) per step such that the 3TConv
construction reproduces W[o] as well as possible; the relative residual ‖Ŵ−W‖/‖W‖ is the filter's
"3T-explainability". Two variants: plain 3T, and 3T with one gain g_t per slice (plain 3T cannot flip a
sign or change the temporal gain, so a temporal derivative [W, 0, −W] leaves 1/√2 ≈ 0.71).

Why it is fast: one bilinear warp of a k_h×k_w slice with zero padding is a P×P matrix (P = k_h·k_w) of
tent weights, exactly what grid_sample computes, so slice t is S_t·K_0 with S_t = G_t…G_1, and the
problem is separable: for fixed transforms K_0 is a linear least-squares solve (variable projection),
and only the 4(k_t−1) (+k_t gains) transform numbers are left to a Levenberg–Marquardt search. The data
enter only through W·Wᵀ, so input channels are first compressed to at most k_t·P (a QR), all filters of
a layer and all restarts are one batch, and nothing loops over filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workers.tconv.layer import build_kernel

ProgressFn = Callable[[float], None]

# Restart draws (besides the identity start): log-scale, rotation (rad) and translation (normalised
# units) uniform in ±these. Wide translations let a fit discover that content leaves the kernel.
_RESTART_LOG_SCALE = 0.25
_RESTART_ROTATION = 0.5
_RESTART_TRANSLATION = 1.5
# Every start is nudged by this much (N(0, 1) times it): bilinear warps have kinks exactly where sample
# points hit pixel centres (identity, whole-pixel shifts), where the symmetric derivative is zero and LM
# would not move; a nudge makes the one-sided derivative valid.
_START_JITTER = 1e-3
# Best grid points per step refined by that LM (the grid's best alone can sit in the wrong basin).
_REGISTRATION_CANDIDATES = 4
# Deterministic starts before the random ones: identity, slice registration, content leaving the window.
_FIXED_STARTS = 3
# Levenberg–Marquardt damping: start, shrink on success, grow on failure, give up above.
_LAMBDA_START, _LAMBDA_DOWN, _LAMBDA_UP, _LAMBDA_MAX = 1e-3, 3.0, 4.0, 1e8
# Stop a row when one accepted step gains less than this share of ‖W‖²; every _PRUNE_EVERY iterations
# stop rows whose cost is above _PRUNE_RATIO × their filter's best restart (they will not win).
_STALL = 1e-9
_PRUNE_EVERY, _PRUNE_RATIO = 20, 1.2
# Bound on the elements of the per-chunk Jacobian-sized tensors (rows × parameters × k_t·P × P): filters
# are fitted in chunks below it, so that huge layers stay in memory.
_CHUNK_ELEMENTS = 40_000_000


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


def sampling_matrix(
    scale: torch.Tensor, rotate: torch.Tensor, translate_x: torch.Tensor, translate_y: torch.Tensor, k_h: int, k_w: int
) -> torch.Tensor:
    """(..., P, P) matrix G with warped = G @ slice (pixels row-major) for parameters of any batch shape:
    grid_sample(bilinear, zeros, align_corners=True) through affine_grid(s·R(r)·[I | t]), written as tent
    weights max(0, 1−|u−j|) so it is differentiable in closed form and costs nothing for kernel slices."""
    phi_step = torch.stack([torch.log(scale), rotate, translate_x, translate_y], dim=-1)
    warp, _ = _warp_step(phi_step.reshape(-1, 4), k_h, k_w, derivative=False)
    return warp.reshape(*scale.shape, k_h * k_w, k_h * k_w)


def _warp_step(
    phi_step: torch.Tensor, k_h: int, k_w: int, derivative: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step's (B, P, P) warp matrix G and, if asked, dG/d[log s, r, tx, ty] as (B, 4, P, P).

    With a = p + t and q = s·R(r)·a: dq/dlog s = q, dq/dr = (−q_y, q_x), dq/dt = s·R(r) columns.
    """
    dtype, device = phi_step.dtype, phi_step.device
    px, py, col, row = _pixel_grid(k_h, k_w, dtype, device)
    log_s, rot, tx, ty = (v[:, None] for v in phi_step.unbind(-1))
    s, c, sn = torch.exp(log_s), torch.cos(rot), torch.sin(rot)
    ax, ay = px + tx, py + ty
    qx, qy = s * (c * ax - sn * ay), s * (sn * ax + c * ay)  # (B, P)
    half_w, half_h = (k_w - 1) / 2.0, (k_h - 1) / 2.0
    du = ((qx + 1.0) * half_w)[..., None] - col  # (B, P, P): output pixel p, source pixel j
    dv = ((qy + 1.0) * half_h)[..., None] - row
    wx, wy = torch.relu(1.0 - du.abs()), torch.relu(1.0 - dv.abs())
    warp = wx * wy
    if not derivative:
        return warp, None
    slope_x = -torch.sign(du) * (du.abs() < 1.0).to(dtype) * wy * half_w  # d warp / d qx
    slope_y = -torch.sign(dv) * (dv.abs() < 1.0).to(dtype) * wx * half_h
    sc, ss = (s * c).expand_as(qx), (s * sn).expand_as(qx)
    dqx = torch.stack([qx, -qy, sc, -ss], dim=1)[..., None]  # (B, 4, P, 1)
    dqy = torch.stack([qy, qx, ss, sc], dim=1)[..., None]
    return warp, slope_x[:, None] * dqx + slope_y[:, None] * dqy


def _pixel_grid(k_h: int, k_w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Normalised (x, y) of each output pixel and (column, row) of each source pixel, row-major, (P,)."""
    ys = torch.linspace(-1.0, 1.0, k_h, dtype=dtype, device=device) if k_h > 1 else torch.zeros(1, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, k_w, dtype=dtype, device=device) if k_w > 1 else torch.zeros(1, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    col = torch.arange(k_w, dtype=dtype, device=device).repeat(k_h)
    row = torch.arange(k_h, dtype=dtype, device=device).repeat_interleave(k_w)
    return gx.reshape(-1), gy.reshape(-1), col, row


def _operators(
    phi: torch.Tensor, k_t: int, k_h: int, k_w: int, gain: bool, derivative: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """F (B, k_t·P, P): the stacked maps K_0 -> slice t, and (if asked) dF/dphi (B, n, k_t·P, P).

    phi rows = [log s, r, tx, ty] for steps 1..k_t−1, then (gain variant) g_0..g_{k_t−1}.
    S_0 = I, S_t = G_t S_{t−1}, so dS_t = G_t dS_{t−1} + dG_t S_{t−1}.
    """
    b, p = phi.shape[0], k_h * k_w
    steps = k_t - 1
    n_motion = 4 * steps
    current = torch.eye(p, dtype=phi.dtype, device=phi.device).expand(b, p, p)
    d_ops = phi.new_zeros((b, n_motion, k_t, p, p)) if derivative else None
    mats = [current]
    for step in range(steps):
        warp, d_warp = _warp_step(phi[:, 4 * step : 4 * step + 4], k_h, k_w, derivative)
        if d_ops is not None and d_warp is not None:
            k = 4 * step
            if k:  # earlier steps' derivatives carried through this warp: G_t dS_{t−1}
                prev = d_ops[:, :k, step].permute(0, 2, 1, 3).reshape(b, p, k * p)
                d_ops[:, :k, step + 1] = (warp @ prev).reshape(b, p, k, p).permute(0, 2, 1, 3)
            d_ops[:, k : k + 4, step + 1] = (d_warp.reshape(b, 4 * p, p) @ current).reshape(b, 4, p, p)
        current = warp @ current
        mats.append(current)
    ops = torch.stack(mats, dim=1)  # (B, T, P, P)
    if gain:
        g = phi[:, n_motion:]
        if derivative:
            assert d_ops is not None
            d_gain = torch.diag_embed(torch.ones_like(g))[:, :, :, None, None] * ops[:, None]  # (B, T, T, P, P)
            d_ops = torch.cat([d_ops * g[:, None, :, None, None], d_gain], dim=1)
        ops = ops * g[:, :, None, None]
    ops = ops.reshape(b, k_t * p, p)
    if d_ops is not None:
        d_ops = d_ops.reshape(b, d_ops.shape[1], k_t * p, p)
    return ops, d_ops


def _normal_inverse(ops: torch.Tensor) -> torch.Tensor:
    """(FᵀF)⁻¹ with a relative ridge of 1e-12, so vanishing gains stay solvable."""
    normal = ops.transpose(1, 2) @ ops
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype, device=normal.device)
    ridge = 1e-12 * normal.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-30)
    return torch.linalg.inv(normal + ridge[:, None, None] * eye)


def _projected_cost(ops: torch.Tensor, gram: torch.Tensor, gram_trace: torch.Tensor) -> torch.Tensor:
    """min over K_0 of ‖F K_0 − W‖² = tr(C) − tr((FᵀF)⁻¹ FᵀCF), with C = W Wᵀ."""
    inv = _normal_inverse(ops)
    h = ops.transpose(1, 2) @ gram @ ops
    return gram_trace - (inv * h.transpose(1, 2)).sum((1, 2))


def _solve_base(ops: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares K_0 (B, P, r) for fixed operators F (B, M, P) and targets (B, M, r); exact cost."""
    base = _normal_inverse(ops) @ (ops.transpose(1, 2) @ target)
    return base, (ops @ base - target).pow(2).sum((1, 2))


def _registration_start(target: torch.Tensor, k_t: int, k_h: int, k_w: int, generator: torch.Generator) -> torch.Tensor:
    """Per step, the transform that best maps slice t−1 onto slice t: the best point of a grid over
    (log s, r, tx, ty) (scored through P×P Gram matrices, so nothing scales with the channels), refined by
    LM on the two-slice problem. For a kernel that is 3T this lands next to the answer, where the joint
    fit from identity can stall between the kinks of bilinear interpolation."""
    dtype, device = target.dtype, target.device
    filters = target.shape[0]
    shifts = torch.linspace(-1.0, 1.0, 9, dtype=dtype, device=device)
    angles = torch.tensor([-0.3, -0.15, 0.0, 0.15, 0.3], dtype=dtype, device=device)
    logs = torch.tensor([-0.15, 0.0, 0.15], dtype=dtype, device=device)
    grid = torch.cartesian_prod(logs, angles, shifts, shifts)  # (Q, 4)
    warps, _ = _warp_step(grid, k_h, k_w, derivative=False)  # (Q, P, P)
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
    # LM iterations: k_t − 1 (2 for a 3-frame kernel). Up to 50 was tried: on a 64×64×3×3×3 noise layer it cost
    # 40% more fit time for a mean residual of 0.7885 instead of 0.7889, and planted kernels were found either way.
    budget = max(1, k_t - 1)
    refined, _, cost, _ = _levenberg_marquardt(start, pairs, 2, k_h, k_w, False, budget, rows, None)
    pick = cost.reshape(_REGISTRATION_CANDIDATES, rows).argmin(0) * rows + torch.arange(rows, device=device)
    refined = refined[pick]
    return refined.reshape(filters, 4 * (k_t - 1))


def _vanishing_shift(k_h: int, k_w: int) -> tuple[float, float]:
    """A translation (normalised units) that moves a whole k_h×k_w slice out of its zero-padded window."""
    beyond = lambda k: 0.0 if k <= 1 else 2.0 + 2.0 / (k - 1) + 0.5  # noqa: E731
    return (beyond(k_w), 0.0) if k_w > 1 else (0.0, beyond(k_h))


def _initial_parameters(
    target: torch.Tensor, restarts: int, k_t: int, k_h: int, k_w: int, gain: bool, generator: torch.Generator,
    warm: torch.Tensor | None = None,
) -> torch.Tensor:
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


def _normal_equations(
    ops: torch.Tensor, d_ops: torch.Tensor, gram: torch.Tensor, gram_trace: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """JᵀJ (b,n,n), Jᵀr (b,n) and the cost for Kaufman's variable-projection Jacobian J_j = P_⊥ ∂F_j K.

    With N = FᵀF, Σ = K Kᵀ = N⁻¹(FᵀCF)N⁻¹, E = W Kᵀ = C F N⁻¹ and A_j = Fᵀ∂F_j:
    JᵀJ_ij = <∂F_i, ∂F_j Σ> − <A_i, N⁻¹ A_j Σ>,  Jᵀr_j = −<∂F_j, E> + <A_j, N⁻¹ Fᵀ E>.
    Each product is one batched matmul of kernel-sized matrices (the shapes are arranged for that).
    """
    b, n, m, p = d_ops.shape
    inv = _normal_inverse(ops)
    ops_t = ops.transpose(1, 2)
    c_ops = gram @ ops  # C F (b, M, P)
    h = ops_t @ c_ops
    cost = gram_trace - (inv * h.transpose(1, 2)).sum((1, 2))
    sigma = inv @ h @ inv
    e = c_ops @ inv
    flat = d_ops.reshape(b, n, m * p)
    first = flat @ (d_ops.reshape(b, n * m, p) @ sigma).reshape(b, n, m * p).transpose(1, 2)
    a_mat = ops_t @ d_ops.permute(0, 2, 1, 3).reshape(b, m, n * p)  # (b, P, n·P): A[b, p, j, q]
    right = ((inv @ a_mat).reshape(b, p * n, p) @ sigma).reshape(b, p, n, p)
    a_by_j = a_mat.reshape(b, p, n, p).permute(0, 2, 1, 3).reshape(b, n, p * p)
    second = a_by_j @ right.permute(0, 1, 3, 2).reshape(b, p * p, n)
    jtj = first - second
    jtj = 0.5 * (jtj + jtj.transpose(1, 2))
    inv_ft_e = (inv @ (ops_t @ e)).reshape(b, p * p, 1)
    jtr = -(flat @ e.reshape(b, m * p, 1))[..., 0] + (a_by_j @ inv_ft_e)[..., 0]
    return jtj, jtr, cost


def _levenberg_marquardt(
    phi: torch.Tensor, target: torch.Tensor, k_t: int, k_h: int, k_w: int, gain: bool, steps: int, filters: int,
    progress: ProgressFn | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Batched variable-projection LM with Kaufman's Jacobian, written through C = W·Wᵀ so that nothing
    scales with the input channels. Rows are restart·filters + filter. Rows stop when converged, or
    when they trail their filter's best restart by more than _PRUNE_RATIO in cost at a checkpoint.

    Returns (phi, K_0 (B,P,r), exact cost, iterations run)."""
    rows, n = phi.shape
    target_flat = target.reshape(rows, -1, target.shape[-1])  # (B, M, r)
    gram = target_flat @ target_flat.transpose(1, 2)
    gram_trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    eye_n = torch.eye(n, dtype=phi.dtype, device=phi.device)
    lam = torch.full((rows,), _LAMBDA_START, dtype=phi.dtype, device=phi.device)
    cost_all = torch.full((rows,), float("inf"), dtype=phi.dtype, device=phi.device)
    active = torch.arange(rows, device=phi.device)
    phi = phi.clone()
    iterations = 0
    for it in range(steps):
        if active.numel() == 0:
            break
        iterations = it + 1
        p_act, c_act, l_act = phi[active], gram[active], lam[active]
        ops, d_ops = _operators(p_act, k_t, k_h, k_w, gain, derivative=True)
        assert d_ops is not None
        jtj, jtr, cost = _normal_equations(ops, d_ops, c_act, gram_trace[active])
        damping = l_act[:, None, None] * (torch.diag_embed(jtj.diagonal(dim1=-2, dim2=-1)) + 1e-9 * eye_n)
        delta = torch.linalg.solve(jtj + damping, -jtr[..., None])[..., 0]
        trial = p_act + delta
        trial_cost = _projected_cost(_operators(trial, k_t, k_h, k_w, gain)[0], c_act, gram_trace[active])
        better = (trial_cost < cost) & torch.isfinite(trial_cost)
        phi[active] = torch.where(better[:, None], trial, p_act)
        l_new = torch.where(better, l_act / _LAMBDA_DOWN, l_act * _LAMBDA_UP).clamp_min(1e-12)
        lam[active] = l_new
        now = torch.where(better, trial_cost, cost)
        cost_all[active] = now
        scale = gram_trace[active].clamp_min(1e-300)
        stalled = better & ((cost - trial_cost) <= _STALL * scale)
        done = (l_new >= _LAMBDA_MAX) | stalled | (now <= 1e-24 * scale)
        if (it + 1) % _PRUNE_EVERY == 0:
            best = cost_all.reshape(-1, filters).min(0).values
            trailing = now > _PRUNE_RATIO * best[active % filters] + 1e-12 * scale
            done = done | trailing
        active = active[~done]
        if progress is not None:
            progress((it + 1) / steps)
    base, cost = _solve_base(_operators(phi, k_t, k_h, k_w, gain)[0], target_flat)
    return phi, base, cost, iterations


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
) -> ThreeTFit:
    """Fit every filter of a Conv3d weight (C_out, C_in, k_t, k_h, k_w) with 3T, all filters at once.

    restarts: random starts besides the three fixed ones (identity, slice registration, content leaving
    the window); warm_start: one more start from another fit's transforms (give the gain variant the
    plain fit, so it never ends worse); steps: LM iterations at most (rows stop early once converged).
    Runs in float64 on `device` (default: the weight's).
    """
    if weight.dim() != 5:
        raise ValueError(f"expected a 5D Conv3d weight, got shape {tuple(weight.shape)}")
    c_out, c_in, k_t, k_h, k_w = (int(s) for s in weight.shape)
    if k_t < 2:
        raise ValueError("a kernel with one time step has no temporal transform to fit")
    device = torch.device(device) if device is not None else weight.device
    w = weight.detach().to(device=device, dtype=torch.float64)
    p = k_h * k_w
    # (C_out, T·P, C_in): rows are (t, y, x), columns input channels; compress columns (Wᵀ = Q·R).
    rows = w.permute(0, 2, 3, 4, 1).reshape(c_out, k_t * p, c_in)
    if c_in > k_t * p:
        q, r = torch.linalg.qr(rows.transpose(1, 2), mode="reduced")  # q (C_out, C_in, T·P)
        compact = r.transpose(1, 2)
    else:
        q, compact = None, rows
    target_all = compact.reshape(c_out, k_t, p, -1)
    generator = torch.Generator().manual_seed(int(seed))
    warm = None
    if warm_start is not None:
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device).T  # (C_out, steps)  # noqa: E731
        parts = [torch.log(as_t(warm_start.scale)), as_t(warm_start.rotate), as_t(warm_start.translate_x), as_t(warm_start.translate_y)]
        warm = torch.stack(parts, dim=-1).reshape(c_out, 4 * (k_t - 1))
    params_per_filter = 4 * (k_t - 1) + (k_t if gain else 0)
    per_filter_elements = (restarts + _FIXED_STARTS + 1) * (3 * params_per_filter * k_t * p * p + (k_t * p) ** 2)
    chunk = max(1, min(c_out, _CHUNK_ELEMENTS // max(per_filter_elements, 1)))
    phis, bases, costs = [], [], []
    for start in range(0, c_out, chunk):
        stop = min(c_out, start + chunk)
        filters = stop - start
        starts = restarts + _FIXED_STARTS + (warm is not None)
        target = target_all[start:stop].repeat(starts, 1, 1, 1)
        warm_rows = warm[start:stop] if warm is not None else None
        phi0 = _initial_parameters(target_all[start:stop], restarts, k_t, k_h, k_w, gain, generator, warm_rows)
        report = None
        if progress is not None:
            report = lambda f, a=start, z=stop: progress((a + f * (z - a)) / c_out)  # noqa: E731
        phi, base, cost, _ = _levenberg_marquardt(phi0, target, k_t, k_h, k_w, gain, steps, filters, report)
        best = cost.reshape(starts, filters).argmin(0)
        pick = best * filters + torch.arange(filters, device=device)
        phis.append(phi[pick])
        bases.append(base[pick])
        costs.append(cost[pick])
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
