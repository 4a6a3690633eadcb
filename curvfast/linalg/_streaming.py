"""Streaming left singular pairs of a tall activation matrix whose rows arrive batch by batch.

The matrix is X = [X_1; X_2; ...] (n x d): n rows (activation patches) of dimension d, possibly
split into ``g`` independent groups (grouped convolutions), so every batch is a tensor
(g, n_b, d). We want the right singular vectors U and singular values σ of X (the left
singular pairs of the d x n matrix A = Xᵀ), i.e. the eigenpairs of G = XᵀX = Σ_b X_bᵀ X_b, and
the total energy ‖X‖_F² = Σ σ². Memory never depends on n.

Two routes:

- ``StreamingGram`` ("gram"): accumulate G exactly (d x d per group, one pass). Its result is the
  ``GramSpectrum``, which keeps G itself: a function of G (a projector f(G)) can then be computed
  by one Cholesky factorisation instead of an eigendecomposition, and ``u``/``s`` are computed by
  ``eigh`` / ``eigvalsh`` only when asked for. Exact; cost 2 n d² for the products.
- ``StreamingRandomizedSVD`` ("randomized"): randomized subspace iteration on G without forming
  it. Pass 0 sketches Z = G Ω = Σ_b X_bᵀ (X_b Ω) for an orthonormalised Gaussian Ω (d x l,
  l = rank + oversample); each further pass (one per power iteration) re-orthonormalises
  Q = orth(Z) and streams Z = G Q again. The result is the Nyström approximation
  Ĝ = Z (QᵀZ)⁺ Zᵀ, computed stably with a small shift ν (Tropp, Yurtsever, Udell & Cevher 2017,
  "Fixed-rank approximation of a positive-semidefinite matrix from streaming data", Alg. 3).
  Cost (1 + q) · 4 n d l + O(d l²); memory d x l. Exact when rank(X) <= l.

A batch is either a tensor of rows (g, n_b, d) or any *row operator*: an object with ``groups``,
``dim``, ``rows`` and the three products the sketches need, ``energy()`` = ‖X_b‖_F² per group,
``add_gram_to(G)`` (G += X_bᵀX_b) and ``add_gram_times_to(Z, Q)`` (Z += X_bᵀ(X_b Q)). ``DenseRows``
is the operator of an explicit row tensor; ``curvfast.pipelines.verifix.patches.ConvPatches`` is the one of
a convolution's patches, computed by convolutions without forming the patch matrix.

``choose_route`` picks the cheaper one from a cost model whose constants were measured on the
development machine (one CPU thread, float64): "randomized" when a truncated rank is acceptable
(``rank`` given) or when there are fewer rows than dimensions (then it is exact), and its passes
cost less than the Gram products + the factorisations of G its result is used through.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ._randomized import gaussian_sketch, orthonormalize
from ..errors import ConfigError, DataError, UnknownNameError

__all__ = ["SpectrumResult", "GramSpectrum", "DenseRows", "StreamingGram", "StreamingRandomizedSVD", "make_sketch",
           "choose_route", "ROUTES"]

ROUTES = ("auto", "gram", "randomized")

# Measured with torch 2.14 on one thread of the 2-core development CPU, float64, for a CIFAR
# ResNet-18's last-stage layers (``python -m benchmarks.verifix_routes``; docs/verifix.md): the Gram
# products (2 n d², half of them computed, by symmetry) run at ~3e-11 s per counted flop; the
# sketch products (4 n d l: a convolution with l filters and its weight gradient, slow on 4x4
# maps) at ~6e-11; a reduced QR of d x l ~1.6e-10 · d l² s per pass, the Nyström result (a
# triangular solve and an SVD of d x l) ~3e-10 · d l². A result is used through 5 projectors
# (Verifix's α grid): from a Gram matrix eigenvalues + 5 Cholesky factorisations and inverses,
# ~3.5e-10 · d³ s (32 s at d = 4608); from l singular pairs 5 products U f(s) Uᵀ, ~2.5e-10 · d² l s.
_GRAM_SECONDS_PER_FLOP = 3e-11
_SKETCH_SECONDS_PER_FLOP = 6e-11
_FACTOR_SECONDS_PER_D3 = 3.5e-10
_QR_SECONDS_PER_DL2 = 1.6e-10
_NYSTROM_SECONDS_PER_DL2 = 3e-10
_LOWRANK_PROJECTOR_SECONDS_PER_D2L = 2.5e-10


@dataclass
class SpectrumResult:
    """A truncated spectrum of X per group.

    Attributes:
        u: right singular vectors (g, d, k).
        s: singular values (g, k), descending.
        energy: the exact total energy ‖X‖_F² per group (g,).
        rows: the number of rows seen.
        route: the route used.
    """

    u: torch.Tensor
    s: torch.Tensor
    energy: torch.Tensor
    rows: int
    route: str

    @property
    def energy_fraction(self) -> torch.Tensor:
        """The energy fractions r_i = σ_i² / ‖X‖_F² (g, k).

        They sum to 1 for the exact route, to the captured fraction otherwise.
        """
        return self.s.square() / self.energy.clamp_min(torch.finfo(self.s.dtype).tiny).unsqueeze(-1)


@dataclass
class GramSpectrum:
    """The exact spectrum, held as the Gram matrix G = XᵀX itself.

    ``s`` and ``u`` are computed when asked for, so that a caller needing only f(G) never pays for the
    eigenvectors.

    Attributes:
        gram: G (g, d, d).
        energy: the exact total energy trace G (g,).
        rows: the number of rows seen.
        route: ``"gram"``.
    """

    gram: torch.Tensor
    energy: torch.Tensor
    rows: int
    route: str = "gram"

    @cached_property
    def s(self) -> torch.Tensor:
        """σ_i = √eig_i(G) (g, d), descending, by ``eigvalsh`` (cached)."""
        return torch.linalg.eigvalsh(self.gram).flip(-1).clamp_min(0).sqrt()

    @property
    def u(self) -> torch.Tensor:
        """The eigenvectors of G (g, d, d), by ``eigh`` (not cached: d² memory)."""
        return torch.linalg.eigh(self.gram)[1].flip(-1)

    energy_fraction = SpectrumResult.energy_fraction


class DenseRows:
    """The row operator of an explicit row tensor ``x`` (g, n, d) (or (n, d) for one group).

    Args:
        x: The rows X_b, (groups, rows, dim) or (rows, dim).

    Raises:
        DataError: For another number of dimensions.
    """

    def __init__(self, x: torch.Tensor):
        self.x = x.unsqueeze(0) if x.ndim == 2 else x
        if self.x.ndim != 3:
            raise DataError(f"rows must have shape (groups, rows, dim) or (rows, dim) (got {tuple(x.shape)})")
        self.groups, self.rows, self.dim = self.x.shape

    def energy(self) -> torch.Tensor:
        """‖X_b‖_F² per group.

        Returns:
            The energies (g,).
        """
        return self.x.square().sum(dim=(1, 2))

    def add_gram_to(self, gram: torch.Tensor) -> None:
        """G += X_bᵀ X_b, in place.

        Args:
            gram: G (g, d, d), updated in place.
        """
        gram.baddbmm_(self.x.mT, self.x)

    def add_gram_times_to(self, z: torch.Tensor, q: torch.Tensor) -> None:
        """Z += X_bᵀ (X_b Q), in place.

        Args:
            z: Z (g, d, l), updated in place.
            q: Q (g, d, l).
        """
        z.baddbmm_(self.x.mT, self.x @ q)


class _Sketch:
    route = ""

    def __init__(self, dim: int, groups: int, dtype: torch.dtype, device: torch.device | str | None, passes: int):
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive int (got {dim!r})")
        if not isinstance(groups, int) or groups < 1:
            raise ConfigError(f"groups must be a positive int (got {groups!r})")
        self.dim, self.groups, self.dtype, self.device = dim, groups, dtype, torch.device(device or "cpu")
        self.passes = passes
        self.passes_done = 0
        self.rows = 0
        self.energy = torch.zeros(groups, dtype=dtype, device=self.device)

    @property
    def done(self) -> bool:
        """True once every pass over the data has been streamed."""
        return self.passes_done >= self.passes

    def _prepare(self, x: Any) -> Any:
        """The batch as a row operator (a tensor becomes ``DenseRows`` in the sketch's dtype).

        The first pass also counts its rows and energy.
        """
        if self.done:
            raise RuntimeError(f"all {self.passes} pass(es) of this {self.route} sketch are complete; call result()")
        if isinstance(x, torch.Tensor):
            x = DenseRows(x.to(device=self.device, dtype=self.dtype))
        if x.groups != self.groups or x.dim != self.dim:
            raise DataError(f"batch must have shape (groups={self.groups}, rows, dim={self.dim}) (got "
                            f"groups={x.groups}, dim={x.dim})")
        if self.passes_done == 0:
            self.rows += x.rows
            self.energy += x.energy().to(self.energy)
        return x

    def end_pass(self) -> None:
        """Close the current pass over the data.

        Raises:
            DataError: When the first pass streamed no rows.
        """
        if self.passes_done == 0 and self.rows == 0:
            raise DataError("no rows were streamed into the sketch; the data is empty")
        self.passes_done += 1

    def _check_result(self) -> None:
        if not self.done:
            raise RuntimeError(f"the sketch needs {self.passes - self.passes_done} more pass(es) over the data before "
                               "result()")


class StreamingGram(_Sketch):
    r"""Exact route: G = Σ_b X_bᵀ X_b accumulated in ``dtype`` (float64 by default).

    .. math:: G = \sum_b X_b^T X_b

    Args:
        dim: The row dimension d, a positive int.
        groups: Independent groups g, a positive int.
        dtype: The accumulation dtype.
        device: Where G lives (default: the CPU).

    Raises:
        ConfigError: For a non-positive ``dim`` or ``groups``.
    """

    route = "gram"

    def __init__(self, dim: int, *, groups: int = 1, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None):
        super().__init__(dim, groups, dtype, device, passes=1)
        self.gram = torch.zeros(groups, dim, dim, dtype=dtype, device=self.device)

    def update(self, x: Any) -> None:
        """Add the rows of ``x`` ((g, n_b, d) or (n_b, d) for one group, or a row operator).

        Args:
            x: The rows: a tensor (g, n_b, d) or (n_b, d) for one group, or a row operator (``groups``, ``rows``,
                ``dim``, ``energy()``, ``add_gram_to``, ``add_gram_times_to``, as :class:`DenseRows`).

        Raises:
            DataError: When the batch's groups or dim differ from the sketch's.
            RuntimeError: When every pass is already complete.
        """
        self._prepare(x).add_gram_to(self.gram)

    def result(self) -> GramSpectrum:
        """The Gram matrix itself (not copied: the sketch is done with it).

        Returns:
            The exact spectrum, as :class:`GramSpectrum`.

        Raises:
            RuntimeError: Before the pass is closed with :meth:`end_pass`.
        """
        self._check_result()
        return GramSpectrum(self.gram, self.energy.clone(), self.rows, self.route)


class StreamingRandomizedSVD(_Sketch):
    """Randomized route: rank-``rank`` eigenpairs of G = XᵀX from 1 + ``power_iters`` streamed passes.

    Args:
        dim: The row dimension d, a positive int.
        rank: The target rank k, in [1, dim].
        oversample: Extra sketch columns (>= 0); the sketch has l = min(rank + oversample, dim) columns.
        power_iters: Power iterations q (>= 0), each one more pass over the data.
        groups: Independent groups g, a positive int.
        seed: Fixes the Gaussian test matrix.
        dtype: The accumulation dtype.
        device: Where the sketch lives (default: the CPU).

    Raises:
        ConfigError: For a rank outside [1, dim], a negative ``oversample`` or ``power_iters``, or a non-positive
            ``dim`` or ``groups``.
    """

    route = "randomized"

    def __init__(
        self, dim: int, rank: int, *, oversample: int = 10, power_iters: int = 1, groups: int = 1, seed: int = 0,
        dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
    ):
        if not isinstance(rank, int) or not 1 <= rank <= dim:
            raise ConfigError(f"rank must be an int in [1, dim={dim}] (got {rank!r})")
        if not isinstance(oversample, int) or oversample < 0:
            raise ConfigError(f"oversample must be an int >= 0 (got {oversample!r})")
        if not isinstance(power_iters, int) or power_iters < 0:
            raise ConfigError(f"power_iters must be an int >= 0 (got {power_iters!r})")
        super().__init__(dim, groups, dtype, device, passes=1 + power_iters)
        self.rank = rank
        self.width = min(rank + oversample, dim)
        self.q = orthonormalize(gaussian_sketch((groups, dim, self.width), seed, dtype, self.device))
        self.z = torch.zeros_like(self.q)

    def update(self, x: Any) -> None:
        """Add the rows of ``x`` (a tensor or a row operator) to the current pass: Z += X_bᵀ (X_b Q).

        Args:
            x: The rows: a tensor (g, n_b, d) or (n_b, d) for one group, or a row operator (``groups``, ``rows``,
                ``dim``, ``energy()``, ``add_gram_to``, ``add_gram_times_to``, as :class:`DenseRows`).

        Raises:
            DataError: When the batch's groups or dim differ from the sketch's.
            RuntimeError: When every pass is already complete.
        """
        self._prepare(x).add_gram_times_to(self.z, self.q)

    def end_pass(self) -> None:
        """Close the current pass; between passes, one power iteration (Q = orth(Z), Z = 0).

        Raises:
            DataError: When the first pass streamed no rows.
        """
        super().end_pass()
        if not self.done:  # one power iteration: re-orthonormalise and stream G Q again
            self.q = orthonormalize(self.z)
            self.z = torch.zeros_like(self.q)

    def result(self) -> SpectrumResult:
        r"""The Nyström approximation's leading eigenpairs (Tropp et al. 2017, Alg. 3).

        .. math:: \hat G = Z (Q^T Z)^+ Z^T, \qquad \text{shift } \nu = \sqrt{d} \cdot \epsilon \cdot \lVert Z \rVert

        A numerically indefinite core falls back to Rayleigh-Ritz on span(Q).

        Returns:
            The rank-``rank`` spectrum, as :class:`SpectrumResult`.

        Raises:
            RuntimeError: Before every pass is closed with :meth:`end_pass`.
        """
        self._check_result()
        z, q = self.z, self.q
        eps = torch.finfo(self.dtype).eps
        nu = (self.dim ** 0.5) * eps * torch.linalg.matrix_norm(z).clamp_min(torch.finfo(self.dtype).tiny)
        z_nu = z + nu[:, None, None] * q
        b = q.mT @ z_nu
        chol, info = torch.linalg.cholesky_ex((b + b.mT) / 2)
        if bool((info != 0).any()):  # numerically indefinite core: fall back to Rayleigh-Ritz on span(Q)
            evals, vecs = torch.linalg.eigh((b + b.mT) / 2)
            u, lam = q @ vecs.flip(-1), evals.flip(-1) - nu[:, None]
        else:
            f = torch.linalg.solve_triangular(chol, z_nu.mT, upper=False).mT  # Z_ν C⁻ᵀ
            u, sig, _ = torch.linalg.svd(f, full_matrices=False)
            lam = sig.square() - nu[:, None]
        s = lam[:, : self.rank].clamp_min(0).sqrt()
        return SpectrumResult(u[..., : self.rank], s, self.energy.clone(), self.rows, self.route)


def choose_route(dim: int, rows: int, rank: int | None, *, oversample: int = 10, power_iters: int = 1) -> str:
    """The cheaper route by the measured cost model.

    With ``rank=None`` (exact spectrum asked) the randomized route is still exact when there are fewer rows than
    dimensions (rank(X) <= rows <= l), so it is chosen there if cheaper; otherwise "gram". With a truncated ``rank`` the
    cheaper of (1 + q) randomized passes + QRs + the Nyström result + low-rank projectors and the Gram products +
    factorisations wins.

    Args:
        dim: The row dimension d.
        rows: The expected number of rows n.
        rank: The target rank, or None for the exact spectrum.
        oversample: Extra sketch columns of the randomized route.
        power_iters: Power iterations of the randomized route.

    Returns:
        ``"gram"`` or ``"randomized"``.
    """
    target = min(dim if rank is None else rank, rows)
    width = min(target + oversample, dim)
    if width >= dim or (rank is None and rows > target):
        return "gram"
    gram = 2.0 * rows * dim * dim * _GRAM_SECONDS_PER_FLOP + _FACTOR_SECONDS_PER_D3 * dim**3
    passes = 1 + power_iters
    randomized = (passes * (4.0 * rows * dim * width * _SKETCH_SECONDS_PER_FLOP + _QR_SECONDS_PER_DL2 * dim * width**2)
                  + _NYSTROM_SECONDS_PER_DL2 * dim * width**2 + _LOWRANK_PROJECTOR_SECONDS_PER_D2L * dim * dim * width)
    return "randomized" if randomized < gram else "gram"


def make_sketch(
    dim: int, rows: int, *, route: str = "auto", rank: int | None = None, oversample: int = 10, power_iters: int = 1,
    groups: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
) -> StreamingGram | StreamingRandomizedSVD:
    """A sketch for ``rows`` expected rows of dimension ``dim``; ``route="auto"`` uses ``choose_route``.

    Args:
        dim: The row dimension d.
        rows: The expected number of rows n (clips the randomized rank).
        route: One of :data:`ROUTES`.
        rank: The target rank, or None for the exact spectrum.
        oversample: Extra sketch columns of the randomized route.
        power_iters: Power iterations of the randomized route.
        groups: Independent groups g.
        seed: Fixes the randomized route's test matrix.
        dtype: The accumulation dtype.
        device: Where the sketch lives (default: the CPU).

    Returns:
        A :class:`StreamingGram` or :class:`StreamingRandomizedSVD`.

    Raises:
        UnknownNameError: For an unknown ``route``.
        ConfigError: For ``route="randomized"`` without a rank when rows >= dim, or bad sketch settings.
    """
    if route not in ROUTES:
        raise UnknownNameError(f"route must be one of {ROUTES} (got {route!r})")
    if route == "auto":
        route = choose_route(dim, rows, rank, oversample=oversample, power_iters=power_iters)
    if route == "randomized":
        if rank is None and rows >= dim:
            raise ConfigError("route='randomized' needs a target rank; pass rank=k (or use route='gram' for the exact "
                              "spectrum)")
        return StreamingRandomizedSVD(
            dim, max(1, min(dim if rank is None else rank, rows, dim)), oversample=oversample, power_iters=power_iters,
            groups=groups, seed=seed, dtype=dtype, device=device
        )
    return StreamingGram(dim, groups=groups, dtype=dtype, device=device)
