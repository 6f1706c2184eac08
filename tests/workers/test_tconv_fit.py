"""Known answers for the 3T fit (ANALYSES.md §2): planted 3T kernels, inflated kernels, temporal derivatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.tconv import fit_3t, sampling_matrix
from workers.tconv.fit import _evaluate, _slices
from workers.tconv.layer import affine_matrix, build_kernel


def _planted(seed: int, c_out: int, c_in: int, k_t: int, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A kernel made by the 3T construction itself, with moderate random transforms per filter and step."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((k_t - 1, c_out), generator=g, dtype=torch.float64)  # noqa: E731
    params = {"scale": u(0.9, 1.12), "rotate": u(-0.25, 0.25), "translate_x": u(-0.4, 0.4), "translate_y": u(-0.4, 0.4)}
    base = torch.randn((c_out, c_in, 1, k, k), generator=g, dtype=torch.float64)
    return build_kernel(base, **params), params


def test_sampling_matrix_is_grid_sample() -> None:
    g = torch.Generator().manual_seed(3)
    s = 0.8 + 0.4 * torch.rand(6, generator=g, dtype=torch.float64)
    r, tx, ty = (torch.randn(6, generator=g, dtype=torch.float64) * 0.6 for _ in range(3))
    image = torch.randn(6, 2, 3, 5, generator=g, dtype=torch.float64)
    grid = F.affine_grid(affine_matrix(s, r, tx, ty), [6, 2, 3, 5], align_corners=True)
    want = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    got = (sampling_matrix(s, r, tx, ty, 3, 5)[:, None] @ image.reshape(6, 2, 15, 1)).reshape(6, 2, 3, 5)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("gain", [False, True])
@pytest.mark.parametrize(("k_t", "k_h", "k_w", "cols"), [(3, 3, 4, 5), (3, 3, 3, 20), (4, 5, 5, 2)])
def test_jacobian_matches_finite_differences(gain: bool, k_t: int, k_h: int, k_w: int, cols: int) -> None:
    """The closed-form JᵀJ and Jᵀr the LM relies on (fewer columns than pixels, more, and the column
    rotation in between), against central differences of the cost and an explicit Kaufman Jacobian."""
    g = torch.Generator().manual_seed(1)
    n = 4 * (k_t - 1) + (k_t if gain else 0)
    p = k_h * k_w
    phi = torch.randn((2, n), generator=g, dtype=torch.float64) * 0.3
    if gain:
        phi[:, 4 * (k_t - 1) :] += 1.0
    w = torch.randn((2, k_t, p, cols), generator=g, dtype=torch.float64)
    ev = _evaluate(phi, w, k_t, k_h, k_w, gain, jacobian=True)
    assert ev.jtj is not None and ev.jtr is not None

    def ops(x: torch.Tensor) -> torch.Tensor:
        rest, _, _ = _slices(x, k_t, k_h, k_w, derivative=False)
        s = torch.cat([torch.eye(p, dtype=torch.float64).expand(2, p, p), rest], dim=1).reshape(2, k_t, p, p)
        if gain:
            s = s * x[:, 4 * (k_t - 1) :, None, None]
        return s.reshape(2, k_t * p, p)

    f = ops(phi)
    proj = torch.eye(k_t * p, dtype=torch.float64) - f @ torch.linalg.inv(f.transpose(1, 2) @ f) @ f.transpose(1, 2)
    eps = 1e-6
    columns = []
    for j in range(n):
        step = torch.zeros(n, dtype=torch.float64)
        step[j] = eps
        up = _evaluate(phi + step, w, k_t, k_h, k_w, gain, jacobian=False).cost
        down = _evaluate(phi - step, w, k_t, k_h, k_w, gain, jacobian=False).cost
        torch.testing.assert_close(2 * ev.jtr[:, j], (up - down) / (2 * eps), atol=1e-5, rtol=1e-6)
        d_ops = (ops(phi + step) - ops(phi - step)) / (2 * eps)
        columns.append((proj @ d_ops @ ev.base).reshape(2, -1))
    jac = torch.stack(columns, dim=-1)
    torch.testing.assert_close(ev.jtj, jac.transpose(1, 2) @ jac, atol=1e-6, rtol=1e-7)
    exact = (f @ ev.base - w.reshape(2, k_t * p, cols)).pow(2).sum((1, 2))
    torch.testing.assert_close(ev.cost, exact, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(("k_t", "k", "c_in"), [(3, 3, 4), (4, 5, 2)])
def test_planted_3t_kernel_is_recovered(k_t: int, k: int, c_in: int) -> None:
    weight, truth = _planted(seed=k_t, c_out=4, c_in=c_in, k_t=k_t, k=k)
    fit = fit_3t(weight.float(), restarts=4, steps=200, seed=0)
    assert fit.residual.max() < 1e-3
    for name in ("scale", "rotate", "translate_x", "translate_y"):
        np.testing.assert_allclose(getattr(fit, name), truth[name].numpy(), atol=5e-3, err_msg=name)
    # The reported residual is the residual of the reported numbers, through the real layer construction.
    rebuilt = fit.kernel()
    rel = (rebuilt - weight).flatten(1).norm(dim=1) / weight.flatten(1).norm(dim=1)
    np.testing.assert_allclose(rel.numpy(), fit.residual, atol=1e-6)
    gained = fit_3t(weight, gain=True, restarts=4, steps=200, seed=0, warm_start=fit)
    assert gained.residual.max() < 1e-3
    assert gained.gain is not None
    np.testing.assert_allclose(gained.gain, 1.0, atol=1e-3)


def test_inflated_kernel_gives_identity() -> None:
    g = torch.Generator().manual_seed(5)
    base = torch.randn((6, 3, 1, 3, 3), generator=g)
    weight = base.repeat(1, 1, 3, 1, 1)
    fit = fit_3t(weight, restarts=4, steps=200)
    assert fit.residual.max() < 1e-6
    np.testing.assert_allclose(fit.scale, 1.0, atol=1e-4)
    for name in ("rotate", "translate_x", "translate_y"):
        np.testing.assert_allclose(getattr(fit, name), 0.0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(fit.base, base[:, :, 0].numpy(), atol=1e-5)


def test_temporal_derivative_needs_the_gain_variant() -> None:
    """[W, 0, −W]: plain 3T cannot flip a sign; its best is to keep W in slice 0 and move content out of the
    window, leaving ‖W‖/‖[W,0,−W]‖ = 1/√2. One gain per slice explains it exactly, with g = (1, 0, −1)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn((4, 32, 1, 3, 3), generator=g)
    weight = torch.cat([w, torch.zeros_like(w), -w], dim=2)
    plain = fit_3t(weight, restarts=4, steps=200)
    np.testing.assert_allclose(plain.residual, 1 / math.sqrt(2), atol=0.01)
    gained = fit_3t(weight, gain=True, restarts=4, steps=200)
    assert gained.residual.max() < 1e-6
    assert gained.gain is not None
    np.testing.assert_allclose(gained.gain, np.array([[1.0], [0.0], [-1.0]]).repeat(4, axis=1), atol=1e-6)


def test_zero_filter_has_no_residual_and_all_filters_are_fitted_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.tconv.fit as fit_module

    weight, truth = _planted(seed=11, c_out=5, c_in=3, k_t=3, k=3)
    weight[2] = 0.0
    monkeypatch.setattr(fit_module, "_CHUNK_ELEMENTS", 1)  # one filter per chunk
    fit = fit_3t(weight, restarts=2, steps=150)
    assert math.isnan(fit.residual[2])
    live = [0, 1, 3, 4]
    assert fit.residual[live].max() < 1e-3
    np.testing.assert_allclose(fit.translate_x[:, live], truth["translate_x"][:, live].numpy(), atol=5e-3)


def test_fit_rejects_kernels_without_time() -> None:
    with pytest.raises(ValueError):
        fit_3t(torch.zeros(2, 2, 1, 3, 3))
    with pytest.raises(ValueError):
        fit_3t(torch.zeros(2, 3, 3, 3))
