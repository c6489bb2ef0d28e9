"""The batched HSIC estimator against a plain one-component-at-a-time reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprune.scoring.hsic import (
    DEFAULT_SIGMAS,
    ScoringError,
    center_gram,
    gaussian_gram,
    gaussian_gram_minus_one,
    gram,
    hsic,
    hsic_cross,
    hsic_pairwise,
    hsic_to_target,
    linear_gram,
    normalized_hsic,
    normalized_hsic_cross,
    standardised,
)

# ---- reference: textbook formulas, one component at a time, numpy float64 -------------------

def ref_standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)


def ref_gram(x: np.ndarray, kernel: str, bandwidth: str = "fixed") -> np.ndarray:
    if kernel == "linear":
        return x @ x.T
    z = ref_standardise(x)
    n, p = z.shape
    d = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(n)] for i in range(n)])
    if bandwidth == "median":
        off = np.sort(d[np.triu_indices(n, 1)])
        med = off[(len(off) - 1) // 2]  # the lower median, as torch.median
        return np.exp(-d / (2 * med))
    return np.mean([np.exp(-d / (2 * s * s * p)) for s in DEFAULT_SIGMAS], axis=0)


def ref_hsic(k: np.ndarray, l: np.ndarray, unbiased: bool) -> float:
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)
    kt, lt, one = k - np.diag(np.diag(k)), l - np.diag(np.diag(l)), np.ones(n)
    return float((np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3)))


def ref_nhsic(k: np.ndarray, l: np.ndarray, unbiased: bool) -> float:
    return ref_hsic(k, l, unbiased) / np.sqrt(ref_hsic(k, k, unbiased) * ref_hsic(l, l, unbiased))


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def batch():
    """(M=5, n=12, p=7) float64 features with different scales and offsets, and a target."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, 7, generator=gen, dtype=torch.float64) * 3 + 2
    y = torch.softmax(torch.randn(12, 4, generator=gen, dtype=torch.float64), dim=-1)
    return x, y


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_batched_equals_reference_loop(batch, kernel, unbiased):
    x, y = batch
    target = linear_gram(y)
    k = gram(x, kernel)
    assert k.dtype == torch.float64
    ref_l = y.numpy() @ y.numpy().T
    ref_k = [ref_gram(xm.numpy(), kernel) for xm in x]
    for m in range(x.shape[0]):
        np.testing.assert_allclose(k[m].numpy(), ref_k[m], rtol=0, atol=1e-10)

    want = np.array([ref_hsic(km, ref_l, unbiased) for km in ref_k])
    np.testing.assert_allclose(hsic(k, target, unbiased=unbiased).numpy(), want, atol=1e-6,
                               rtol=1e-6)
    np.testing.assert_allclose(hsic_cross(k, target[None], unbiased=unbiased)[:, 0].numpy(), want,
                               atol=1e-6, rtol=1e-6)
    got = hsic_to_target(x, target, kernel=kernel, normalized=False, unbiased=unbiased, chunk=2)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=1e-6)

    want_n = np.array([ref_nhsic(km, ref_l, unbiased) for km in ref_k])
    got_n = hsic_to_target(x, target, kernel=kernel, normalized=True, unbiased=unbiased, chunk=3)
    np.testing.assert_allclose(got_n.numpy(), want_n, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(normalized_hsic(k, target, unbiased=unbiased).numpy(), want_n,
                               atol=1e-6, rtol=1e-6)

    pairs = np.array([[ref_hsic(a, b, unbiased) for b in ref_k] for a in ref_k])
    np.testing.assert_allclose(hsic_cross(k, k, unbiased=unbiased).numpy(), pairs, atol=1e-6,
                               rtol=1e-6)
    np.testing.assert_allclose(
        hsic_pairwise(x, kernel=kernel, normalized=False, unbiased=unbiased).numpy(), pairs,
        atol=1e-6, rtol=1e-6)
    pairs_n = np.array([[ref_nhsic(a, b, unbiased) for b in ref_k] for a in ref_k])
    np.testing.assert_allclose(normalized_hsic_cross(k, k, unbiased=unbiased).numpy(), pairs_n,
                               atol=1e-6, rtol=1e-6)


def test_median_bandwidth_equals_reference(batch):
    x, _ = batch
    k = gaussian_gram(x, bandwidth="median")
    for m in range(x.shape[0]):
        np.testing.assert_allclose(k[m].numpy(), ref_gram(x[m].numpy(), "gaussian", "median"),
                                   atol=1e-10)


def test_any_bandwidths_and_the_minus_one_form(batch):
    """Bandwidths that are not powers of two apart take the exp path; K - 1 is K minus 1."""
    x, _ = batch
    sig = (1.0, 3.0, 1.5, 2 ** 0.5)
    z = torch.tensor(np.stack([ref_standardise(xm.numpy()) for xm in x]))
    d = ((z[:, :, None, :] - z[:, None, :, :]) ** 2).sum(-1) / x.shape[-1]
    want = sum(torch.exp(-d / (2 * s * s)) for s in sig) / len(sig)
    torch.testing.assert_close(gaussian_gram(x, sig), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(gaussian_gram_minus_one(x, sig), want - 1, rtol=0, atol=1e-12)
    torch.testing.assert_close(gaussian_gram_minus_one(x), gaussian_gram(x) - 1, rtol=0, atol=1e-12)


def test_float32_is_accurate_for_a_near_uniform_softmax_target():
    """A random model's softmax is ~1/classes everywhere: its raw Gram is almost constant.
    Centring it in float32 would leave rounding noise (relative error ~1); HSIC must not."""
    gen = torch.Generator().manual_seed(9)
    n = 64
    latent = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x = (latent @ torch.randn(3, 20, generator=gen, dtype=torch.float64))[None].repeat(4, 1, 1)
    x = x + torch.randn(4, n, 20, generator=gen, dtype=torch.float64) * torch.tensor(
        [0.1, 1.0, 3.0, 10.0], dtype=torch.float64)[:, None, None]
    logits = 0.01 * latent @ torch.randn(3, 1000, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1)
    want = hsic_to_target(x, linear_gram(probs))
    got = hsic_to_target(x.float(), linear_gram(probs.float()))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-5)
    assert want[0] > 0.5 and want[3] < want[0]  # the data are not degenerate


def test_centering_is_h_k_h(batch):
    x, _ = batch
    k = gaussian_gram(x)
    n = k.shape[-1]
    h = torch.eye(n, dtype=k.dtype) - 1.0 / n
    torch.testing.assert_close(center_gram(k), h @ k @ h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_independent_near_zero_dependent_clearly_positive(unbiased):
    gen = torch.Generator().manual_seed(1)
    n = 200
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y_indep = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y_dep = torch.sin(2 * x) + 0.3 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    kx = gaussian_gram(x)
    indep = normalized_hsic(kx, gaussian_gram(y_indep), unbiased=unbiased).item()
    dep = normalized_hsic(kx, gaussian_gram(y_dep), unbiased=unbiased).item()
    # biased HSIC is ~1/n above zero for independent samples (0.03 here), unbiased ~0
    assert abs(indep) < 0.05, indep
    assert dep > 0.15, dep
    assert dep > 5 * abs(indep)
    # raw HSIC too: a clear margin, whatever the scale
    raw_i = hsic(kx, gaussian_gram(y_indep), unbiased=unbiased).item()
    raw_d = hsic(kx, gaussian_gram(y_dep), unbiased=unbiased).item()
    assert raw_d > 5 * abs(raw_i)


@pytest.mark.parametrize("unbiased", [False, True])
def test_invariant_to_joint_permutation_of_samples(batch, unbiased):
    x, y = batch
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(3))
    a = hsic_to_target(x, linear_gram(y), normalized=False, unbiased=unbiased)
    b = hsic_to_target(x[:, perm], linear_gram(y[perm]), normalized=False, unbiased=unbiased)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # permuting only one side breaks the pairing: the value changes
    c = hsic_to_target(x[:, perm], linear_gram(y), normalized=False, unbiased=unbiased)
    assert not torch.allclose(a, c, rtol=1e-3)


def test_normalized_in_unit_interval_and_one_for_identical():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(16, 20, 6, generator=gen)  # float32
    y = torch.randn(16, 20, 3, generator=gen)
    for kernel in ("gaussian", "linear"):
        kx, ky = gram(x, kernel), gram(y, kernel)
        v = normalized_hsic(kx, ky)
        assert v.dtype == torch.float32
        assert (v >= 0).all() and (v <= 1).all()
        torch.testing.assert_close(normalized_hsic(kx, kx), torch.ones(16), atol=1e-5, rtol=0)
        same = hsic_pairwise(x, kernel=kernel)
        torch.testing.assert_close(same.diagonal(), torch.ones(16), atol=1e-5, rtol=0)
        assert (same >= 0).all() and (same <= 1).all()


def test_constant_component_scores_zero_not_nan():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 10, 4, generator=gen)
    x[1] = 0.7  # a dead / constant component
    y = torch.randn(10, 2, generator=gen)
    for normalized in (True, False):
        s = hsic_to_target(x, linear_gram(y), normalized=normalized)
        assert torch.isfinite(s).all()
        assert s[1].abs().item() < 1e-6
        assert s[0] > 1e-3


def test_standardise_is_x_minus_mean_over_std():
    gen = torch.Generator().manual_seed(6)
    x = 5.0 + 3.0 * torch.randn(2, 50, 4, generator=gen, dtype=torch.float64)
    z = standardised(x)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(2, 4, dtype=torch.float64), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(z.std(dim=1, unbiased=False), torch.ones(2, 4, dtype=torch.float64))
    # ``x - mean / std`` (the precedence bug) would keep a mean near 5 - 5/3
    wrong = x - x.mean(dim=1, keepdim=True) / x.std(dim=1, keepdim=True)
    assert not torch.allclose(z, wrong, atol=1e-3)


def test_gaussian_kernel_invariant_to_per_dimension_affine_maps():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 15, 5, generator=gen, dtype=torch.float64)
    scale = torch.tensor([0.01, 1.0, 7.0, 100.0, 0.5], dtype=torch.float64)
    shift = torch.tensor([-3.0, 0.0, 40.0, 1.0, 1e3], dtype=torch.float64)
    torch.testing.assert_close(gaussian_gram(x * scale + shift), gaussian_gram(x))


def test_standardise_zero_std_gives_zeros():
    x = torch.ones(1, 8, 3)
    x[0, :, 1] = torch.arange(8.0)
    x[0, :, 2] = 1e-3  # constant, with rounding noise in its mean
    z = standardised(x)
    assert torch.isfinite(z).all()
    assert z[0, :, 0].abs().max() == 0 and z[0, :, 2].abs().max() == 0
    assert z[0, :, 1].std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


def test_dtypes_follow_input_and_chunking_does_not_change_results(batch):
    x, y = batch
    t = linear_gram(y)
    full = hsic_to_target(x, t, chunk=100)
    torch.testing.assert_close(hsic_to_target(x, t, chunk=1), full, rtol=1e-12, atol=1e-14)
    assert full.dtype == torch.float64
    half = hsic_to_target(x.half(), t)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), full, atol=2e-3, rtol=0)


def test_errors_name_the_problem():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ScoringError, match="at least 4 samples"):
        hsic(gram(x), gram(x), unbiased=True)
    with pytest.raises(ScoringError, match="unknown kernel"):
        gram(x, "cosine")
    with pytest.raises(ScoringError, match="samples"):
        hsic_to_target(x, torch.eye(5))


@pytest.mark.gpu
def test_runs_on_the_input_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(40, 16, 9, generator=gen)
    t = linear_gram(torch.randn(16, 3, generator=gen))
    got = hsic_to_target(x.cuda(), t.cuda(), chunk=7)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), hsic_to_target(x, t), atol=1e-5, rtol=1e-4)
