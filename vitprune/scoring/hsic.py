"""HSIC (Hilbert-Schmidt Independence Criterion) as batched tensor functions.

Every function takes a leading batch of ``M`` components and handles all of them in one tensor
expression; nothing here loops over components in Python (the chunked helpers at the bottom loop
over *groups* of components only, to bound memory). Inputs on the GPU stay on the GPU; float64
inputs give float64 results, anything else is computed in float32.

Conventions (Gretton et al. 2005; Song et al. 2012):

* ``x``: features, (..., n, p): n samples of a p-dimensional feature per component.
* ``K``, ``L``: Gram matrices, (..., n, n).
* ``Hc = I - 11^T / n`` (centring); biased ``HSIC = trace(K Hc L Hc) / (n-1)^2``.

The Gaussian kernel is averaged over bandwidths ``sigma`` in (1, 2, 4, 8, 16) on features
standardised per dimension over the n samples, ``(x - mean) / std``, with the squared distance
divided by the dimension ``p``: ``k(a, b) = mean_sigma exp(-|a - b|^2 / (2 sigma^2 p))``. Dividing
by ``p`` (the convention of the HSIC-bottleneck reference code, Ma et al. 2020) makes ``sigma`` a
per-feature length in units of one standard deviation, so the same bandwidths suit a 17-token and
a 197-token feature; without it, all but the widest kernels would be the identity matrix.

Float32 accuracy. HSIC ignores adding a constant to a kernel (and, for the target, centring
it), so the chunked helpers work with ``K - 1`` (via ``expm1``) and with a target Gram centred in
float64: wide-bandwidth Gaussian kernels and a near-uniform softmax both give almost constant
Gram matrices, whose centring in float32 would cancel most digits. With that, float32 results
agree with float64 to ~1e-5 relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ScoringError

DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
KERNELS = ("gaussian", "linear")
BANDWIDTHS = ("fixed", "median")




def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 input, else float32 (float16 features are upcast before any maths)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def standardised(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per feature dimension over the samples: ``(x - mean) / std``.

    Args:
        x: (..., n, p) features.

    Returns:
        (..., n, p), same dtype as the computation (see :func:`compute_dtype`). A dimension that is
        constant over the samples (spread below 64 float ulps of its largest value, i.e. rounding
        noise) becomes all zeros instead of being blown up to +-1 by a tiny ``std``.
    """
    x = x.to(compute_dtype(x))
    # plain sums, not torch.std_mean / aminmax: those are ~10x slower along a strided dim
    centred = x - x.mean(dim=-2, keepdim=True)
    std = (centred * centred).mean(dim=-2, keepdim=True).sqrt()  # population std
    scale = torch.maximum(x.amax(dim=-2, keepdim=True), -x.amin(dim=-2, keepdim=True))
    constant = std <= 64 * torch.finfo(x.dtype).eps * scale
    # the division happens on the small (..., 1, p) tensor; the big one gets one multiply
    inv = torch.where(constant, torch.zeros_like(std), 1.0 / torch.where(constant, 1.0, std))
    return centred.mul_(inv)


def sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances within each component.

    Args:
        x: (..., n, p).

    Returns:
        (..., n, n), non-negative, exactly zero on the diagonal.
    """
    x = x.to(compute_dtype(x))
    sq = torch.linalg.vecdot(x, x)  # (..., n) squared norms
    # |a-b|^2 = |a|^2 + |b|^2 - 2ab: one batched matmul instead of an (n, n, p) difference tensor
    d = (x @ x.transpose(-1, -2)).mul_(-2.0).add_(sq.unsqueeze(-1)).add_(sq.unsqueeze(-2))
    d.clamp_min_(0.0)  # cancellation can leave tiny negatives
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def linear_gram(x: torch.Tensor) -> torch.Tensor:
    """Linear kernel ``K = x x^T``.

    Args:
        x: (..., n, p).

    Returns:
        (..., n, n).
    """
    x = x.to(compute_dtype(x))
    return x @ x.transpose(-1, -2)


def median_sq_distance(d: torch.Tensor) -> torch.Tensor:
    """Median of the off-diagonal squared distances of each component (the median heuristic).

    Args:
        d: (..., n, n) squared distances.

    Returns:
        (...,) medians; where the median is 0 (most samples identical) the mean is used, and
        where that is 0 too, 1 (any bandwidth gives the same constant kernel then).
    """
    n = d.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=d.device)
    off = d[..., iu[0], iu[1]]  # (..., n(n-1)/2)
    med = off.median(dim=-1).values
    med = torch.where(med > 0, med, off.mean(dim=-1))
    return torch.where(med > 0, med, torch.ones_like(med))


def gaussian_gram(x: torch.Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS, *,
                  bandwidth: str = "fixed", standardise: bool = True) -> torch.Tensor:
    """Gaussian kernel averaged over bandwidths, on standardised features.

    Args:
        x: (..., n, p) features.
        sigmas: bandwidths, in standard deviations of one feature dimension (``bandwidth="fixed"``).
        bandwidth: ``"fixed"``: ``mean_sigma exp(-|a-b|^2 / (2 sigma^2 p))``; ``"median"``:
            ``exp(-|a-b|^2 / (2 m))`` with ``m`` the component's (lower) median squared distance.
        standardise: standardise features first (:func:`standardised`).

    Returns:
        (..., n, n) positive semi-definite Gram matrices with ones on the diagonal.
    """
    k = gaussian_gram_minus_one(x, sigmas, bandwidth=bandwidth, standardise=standardise)
    return k.add_(1.0)


def gaussian_gram_minus_one(x: torch.Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS, *,
                            bandwidth: str = "fixed", standardise: bool = True) -> torch.Tensor:
    """``gaussian_gram(x) - 1``, computed with ``expm1``: what the HSIC helpers use.

    HSIC is unchanged by adding a constant to a kernel, and wide bandwidths give kernels close
    to the all-ones matrix, whose centring would cancel most float32 digits (relative error
    ~1e-4); ``K - 1`` keeps them (~1e-6).

    Args:
        x: (..., n, p); as :func:`gaussian_gram`.

    Returns:
        (..., n, n), in [-1, 0], zero on the diagonal.
    """
    if bandwidth not in BANDWIDTHS:
        raise ScoringError(f"unknown bandwidth '{bandwidth}'; use one of {', '.join(BANDWIDTHS)}")
    x = standardised(x) if standardise else x.to(compute_dtype(x))
    d = sq_distances(x)
    if bandwidth == "median":
        return torch.expm1(d / (-2.0 * median_sq_distance(d)[..., None, None]))
    if not sigmas:
        raise ScoringError("gaussian_gram needs at least one bandwidth in sigmas")
    p = max(x.shape[-1], 1)
    k, m, prev = torch.zeros_like(d), d, None
    for s in sorted((float(s) for s in sigmas), reverse=True):  # a handful of whole-tensor ops
        steps = _squarings(prev, s)
        if steps is None:
            m = torch.expm1(d * (-1.0 / (2.0 * s * s * p)))
        else:  # exp(-a/s^2) = exp(-a/prev^2)^(2^steps): squarings are cheaper than exp
            for _ in range(steps):
                m = torch.addcmul(m, m, m).add_(m)  # (1 + m)^2 - 1 = m^2 + 2m
        k += m
        prev = s
    return k.div_(len(sigmas))


def _squarings(prev: float | None, s: float) -> int | None:
    """``j`` with ``(prev / s)^2 == 2^j`` (1 <= j <= 8), else None (then exp is called)."""
    if prev is None:
        return None
    j = math.log2((prev / s) ** 2)
    return int(round(j)) if abs(j - round(j)) < 1e-12 and 1 <= round(j) <= 8 else None


def gram(x: torch.Tensor, kernel: str = "gaussian", **options) -> torch.Tensor:
    """(..., n, p) features -> (..., n, n) Gram matrices of ``kernel`` (``gaussian``/``linear``).

    ``options`` go to :func:`gaussian_gram` (the linear kernel takes none).
    """
    if kernel == "gaussian":
        return gaussian_gram(x, **options)
    if kernel == "linear":
        return linear_gram(x)
    raise ScoringError(f"unknown kernel '{kernel}'; use one of {', '.join(KERNELS)}")


def _hsic_gram(x: torch.Tensor, kernel: str, **options) -> torch.Tensor:
    """A Gram matrix differing from ``gram(x, kernel)`` only by what HSIC ignores, but exact in
    float32: ``K - 1`` for the Gaussian kernel, the Gram of mean-centred features for the
    linear one (``Hc x x^T Hc``)."""
    if kernel == "gaussian":
        return gaussian_gram_minus_one(x, **options)
    if kernel == "linear":
        x = x.to(compute_dtype(x))
        return linear_gram(x - x.mean(dim=-2, keepdim=True))
    raise ScoringError(f"unknown kernel '{kernel}'; use one of {', '.join(KERNELS)}")


def center_gram(k: torch.Tensor) -> torch.Tensor:
    """``Hc K Hc``: subtract row and column means, add back the grand mean.

    Args:
        k: (..., n, n).

    Returns:
        (..., n, n).
    """
    return (k - k.mean(dim=-1, keepdim=True) - k.mean(dim=-2, keepdim=True)
            + k.mean(dim=(-1, -2), keepdim=True))


def _check_n(n: int, unbiased: bool) -> None:
    need = 4 if unbiased else 2
    if n < need:
        raise ScoringError(
            f"HSIC needs at least {need} samples{' for the unbiased estimator' if unbiased else ''}"
            f", got {n}; use more calibration images"
        )


def _zero_diag(k: torch.Tensor) -> torch.Tensor:
    return k * (1.0 - torch.eye(k.shape[-1], dtype=k.dtype, device=k.device))


def _unbiased(tr: torch.Tensor, sum_k: torch.Tensor, sum_l: torch.Tensor, cross: torch.Tensor,
              n: int) -> torch.Tensor:
    """Song et al. (2012), from tr(Kt Lt), 1'Kt1, 1'Lt1 and 1'Kt Lt 1 (Kt: zero-diagonal K)."""
    return (tr + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def hsic(k: torch.Tensor, l: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """HSIC of matching pairs of Gram matrices, broadcast over leading dimensions.

    Biased: ``trace(K Hc L Hc) / (n-1)^2``. Unbiased (Song et al. 2012), with ``Kt``, ``Lt`` the
    Gram matrices with zeroed diagonals::

        [tr(Kt Lt) + 1'Kt1 1'Lt1 / ((n-1)(n-2)) - 2/(n-2) 1'Kt Lt 1] / (n (n-3))

    Args:
        k: (..., n, n).
        l: (..., n, n), broadcastable against ``k``.
        unbiased: use the unbiased estimator (needs n >= 4).

    Returns:
        (...) HSIC values.
    """
    n = k.shape[-1]
    _check_n(n, unbiased)
    lt = l.transpose(-1, -2)  # tr(AB) = sum(A * B^T): no n^3 matmul needed
    if not unbiased:
        return (center_gram(k) * lt).sum(dim=(-1, -2)) / (n - 1) ** 2
    k, l = _zero_diag(k), _zero_diag(l)
    lt = l.transpose(-1, -2)
    cross = (k.sum(dim=-2) * l.sum(dim=-1)).sum(dim=-1)  # 1'K L1 = (column sums K).(row sums L)
    return _unbiased((k * lt).sum(dim=(-1, -2)), k.sum(dim=(-1, -2)), l.sum(dim=(-1, -2)),
                     cross, n)


def hsic_cross(k: torch.Tensor, l: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """HSIC of every Gram matrix in ``k`` with every one in ``l``, as matrix products.

    Args:
        k: (M, n, n).
        l: (P, n, n).
        unbiased: use the unbiased estimator.

    Returns:
        (M, P): entry (a, b) is ``hsic(k[a], l[b])``.
    """
    n = k.shape[-1]
    _check_n(n, unbiased)
    if not unbiased:  # trace(K Hc L Hc) = <Hc K Hc, L^T>: centre one side, then one matmul
        return center_gram(k).flatten(1) @ l.transpose(-1, -2).flatten(1).T / (n - 1) ** 2
    k, l = _zero_diag(k), _zero_diag(l)
    tr = k.flatten(1) @ l.transpose(-1, -2).flatten(1).T  # (M, P)
    cross = k.sum(dim=-2) @ l.sum(dim=-1).T  # (M, P)
    return _unbiased(tr, k.sum(dim=(-1, -2))[:, None], l.sum(dim=(-1, -2))[None, :], cross, n)


def _normalise(hxy: torch.Tensor, hxx: torch.Tensor, hyy: torch.Tensor,
               unbiased: bool) -> torch.Tensor:
    denom = (hxx.clamp_min(0) * hyy.clamp_min(0)).sqrt()
    # a constant component (e.g. a dead neuron) has HSIC(X, X) = 0: it explains nothing -> 0
    out = torch.where(denom > 0, hxy / torch.where(denom > 0, denom, 1), torch.zeros_like(hxy))
    # biased HSIC of PSD kernels is a cosine of two PSD matrices: [0, 1] up to float error
    return out if unbiased else out.clamp(0.0, 1.0)


def normalized_hsic(k: torch.Tensor, l: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` (CKA), broadcast over leading dimensions.

    In [0, 1] for the biased estimator and PSD kernels (tiny float excursions are clamped); 0
    where either side is constant. The unbiased version is not bounded and is not clamped.

    Args:
        k: (..., n, n).
        l: (..., n, n), broadcastable against ``k``.

    Returns:
        (...).
    """
    return _normalise(hsic(k, l, unbiased=unbiased), hsic(k, k, unbiased=unbiased),
                      hsic(l, l, unbiased=unbiased), unbiased)


def normalized_hsic_cross(k: torch.Tensor, l: torch.Tensor, *,
                          unbiased: bool = False) -> torch.Tensor:
    """:func:`hsic_cross` normalised as :func:`normalized_hsic`: (M, n, n), (P, n, n) -> (M, P)."""
    hkk = hsic(k, k, unbiased=unbiased)  # (M,)
    hll = hsic(l, l, unbiased=unbiased)  # (P,)
    return _normalise(hsic_cross(k, l, unbiased=unbiased), hkk[:, None], hll[None, :], unbiased)


def _check_features(x: torch.Tensor, what: str) -> None:
    if x.ndim != 3:
        raise ScoringError(
            f"{what} must be (components, samples, dims), got shape {tuple(x.shape)}")


def hsic_to_target(x: torch.Tensor, target: torch.Tensor, *, kernel: str = "gaussian",
                   normalized: bool = True, unbiased: bool = False, chunk: int = 32,
                   **gram_options) -> torch.Tensor:
    """Dependence of each component on one target, ``chunk`` components at a time.

    Memory: ``O(chunk * n * (n + p))`` besides ``x`` itself, whatever ``M`` is.

    Args:
        x: (M, n, p) component features (float16 is fine: each chunk is upcast on its own).
        target: (n, n) symmetric Gram matrix of the target (e.g. ``linear_gram(softmax)``),
            centred here in float64; build it in float64 (or from centred features) when it is
            almost constant, as the Gram of a near-uniform softmax is.
        kernel: kernel on the component features (``gaussian`` or ``linear``).
        normalized: return :func:`normalized_hsic` instead of raw HSIC.
        unbiased: use the unbiased estimator.
        chunk: components per batched step.
        **gram_options: passed to :func:`gaussian_gram` (``sigmas``, ``bandwidth``).

    Returns:
        (M,) scores in the computation dtype, on ``x``'s device.
    """
    _check_features(x, "features")
    if target.shape != (x.shape[1], x.shape[1]):
        raise ScoringError(
            f"target Gram matrix is {tuple(target.shape)} but the features have {x.shape[1]} "
            "samples; build both from the same images"
        )
    # centring in float64 first: a near-uniform softmax's Gram is ~constant, and centring it
    # in float32 would leave only rounding noise (HSIC ignores the difference, as Hc L Hc = L')
    target = center_gram(target.to(device=x.device, dtype=torch.float64)).to(compute_dtype(x))
    tt = hsic(target, target, unbiased=unbiased)
    out = []
    for start in range(0, x.shape[0], max(1, chunk)):  # groups of components, bounded memory
        k = _hsic_gram(x[start:start + chunk], kernel, **gram_options)  # (c, n, n)
        hxy, hxx = _with_target(k, target, unbiased)
        out.append(_normalise(hxy, hxx, tt, unbiased) if normalized else hxy)
    return torch.cat(out)


def _with_target(k: torch.Tensor, target: torch.Tensor,
                 unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(HSIC(K_m, target), HSIC(K_m, K_m)) for (c, n, n) ``k``: each K centred only once."""
    if unbiased:
        return hsic_cross(k, target[None], unbiased=True)[:, 0], hsic(k, k, unbiased=True)
    n = k.shape[-1]
    kc = center_gram(k).flatten(1)  # (c, n*n); our Gram matrices are symmetric: no transposes
    hxy = kc @ target.flatten() / (n - 1) ** 2
    hxx = (kc * kc).sum(dim=1) / (n - 1) ** 2  # ||Hc K Hc||^2 = trace(K Hc K Hc)
    return hxy, hxx


def hsic_pairwise(x: torch.Tensor, *, kernel: str = "gaussian", normalized: bool = True,
                  unbiased: bool = False, **gram_options) -> torch.Tensor:
    """Dependence between every pair of components (e.g. the heads of one block).

    All ``M`` Gram matrices are held at once (``M * n * n`` numbers): meant for heads, where M
    is at most a few dozen.

    Args:
        x: (M, n, p) component features.
        kernel, normalized, unbiased, **gram_options: as :func:`hsic_to_target`.

    Returns:
        (M, M) symmetric matrix.
    """
    _check_features(x, "features")
    k = _hsic_gram(x, kernel, **gram_options)
    return (normalized_hsic_cross if normalized else hsic_cross)(k, k, unbiased=unbiased)
