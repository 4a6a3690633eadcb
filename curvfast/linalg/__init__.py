"""Randomized and streaming SVD.

``randomized_svd`` for dense matrices (Halko-Martinsson-Tropp), ``StreamingGram`` / ``StreamingRandomizedSVD`` for tall
matrices streamed row-batch by row-batch, ``make_sketch`` / ``choose_route`` to pick the cheaper route by size.
"""
from ._randomized import gaussian_sketch, orthonormalize, randomized_svd
from ._streaming import (
    ROUTES,
    DenseRows,
    GramSpectrum,
    SpectrumResult,
    StreamingGram,
    StreamingRandomizedSVD,
    choose_route,
    make_sketch,
)

__all__ = [
    "randomized_svd", "orthonormalize", "gaussian_sketch", "StreamingGram", "StreamingRandomizedSVD", "SpectrumResult",
    "GramSpectrum", "DenseRows", "make_sketch", "choose_route", "ROUTES",
]
