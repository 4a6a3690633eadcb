"""Communication graphs and their gossip (mixing) matrices.

A topology is an undirected graph G = (V, E) on the n nodes and a mixing matrix W with
W_ij > 0 only for i = j or (i, j) in E; node i mixes x_i' = sum_j W_ij x_j. Two mixings (``MIXINGS``):

- ``metropolis`` (default): Metropolis-Hastings weights

      W_ij = 1 / (1 + max(d_i, d_j))   for (i, j) in E,      W_ii = 1 - sum_{j != i} W_ij,

  (d_i the degree of node i), symmetric, hence doubly stochastic because every row sums to one, with
  W_ii >= 1 / (1 + d_i) > 0: gossip converges to the plain average of the nodes.
- ``row-normalised`` (the published IDKD code, ``utils/graph_manager.py``): the adjacency matrix plus
  the identity, each row divided by its sum, W_ij = 1 / (1 + d_i) for j in {i} and the neighbours of i.
  Row stochastic only (not symmetric on an irregular graph): gossip converges to an average weighted
  by the stationary distribution of W, which favours well-connected nodes.

On a regular graph of degree d both are 1 / (d + 1) everywhere: the ring has 1/3 for self and both
neighbours (the published setting), the fully connected graph 1/n. They differ on ``social``.

Graphs:
- ``ring``: node i talks to i - 1 and i + 1 (mod n).
- ``torus``: an r x c grid with wrap-around, r the largest divisor of n with r <= sqrt(n)
  (degree 4 when r, c >= 3; a prime n degenerates to a ring).
- ``social``: the 15-node Florentine families marriage network (Padgett; ``networkx.florentine_families_graph``),
  the "social network" topology of the decentralized-learning papers. Needs n = 15. Node i is the i-th family
  in alphabetical order (the published code numbers them in networkx's insertion order: the same graph and
  the same weights per family, the nodes relabelled).
- ``full``: every pair of nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["Topology", "build_topology", "metropolis_hastings", "row_normalised", "TOPOLOGIES", "MIXINGS"]

TOPOLOGIES = ("ring", "torus", "social", "full")
MIXINGS = ("metropolis", "row-normalised")
SOCIAL_NODES = 15


@dataclass(frozen=True)
class Topology:
    """``weights`` is the n x n mixing matrix (float64); ``neighbours[i]`` the sorted neighbours of i (no self)."""

    name: str
    weights: np.ndarray
    neighbours: tuple[tuple[int, ...], ...]
    mixing: str = "metropolis"

    @property
    def num_nodes(self) -> int:
        return len(self.neighbours)

    def spectral_gap(self) -> float:
        """1 - |lambda_2(W)|: how fast gossip mixes (1 for the fully connected graph; W need not be symmetric)."""
        eig = np.sort(np.abs(np.linalg.eigvals(self.weights)))[::-1]
        return float(1.0 - eig[1]) if len(eig) > 1 else 1.0


def _adjacency(num_nodes: int, edges) -> np.ndarray:
    adj = np.zeros((num_nodes, num_nodes), dtype=bool)
    for i, j in edges:
        if i != j:
            adj[i, j] = adj[j, i] = True
    return adj


def metropolis_hastings(num_nodes: int, edges) -> np.ndarray:
    """Mixing matrix of the undirected simple graph on ``num_nodes`` nodes with ``edges`` (pairs; self-loops and
    duplicates ignored). Symmetric and doubly stochastic."""
    adj = _adjacency(num_nodes, edges)
    deg = adj.sum(1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    w[np.diag_indices(num_nodes)] = 1.0 - w.sum(1)
    return w


def row_normalised(num_nodes: int, edges) -> np.ndarray:
    """The published IDKD mixing matrix of the same graph: (A + I) with every row divided by its sum, i.e.
    W_ij = 1 / (1 + d_i) for j = i and every neighbour j of i. Row stochastic; symmetric only on a regular graph."""
    a = _adjacency(num_nodes, edges) + np.eye(num_nodes)
    return a / a.sum(1, keepdims=True)


def _edges(name: str, n: int) -> list[tuple[int, int]]:
    if name == "ring":
        return [(i, (i + 1) % n) for i in range(n)]
    if name == "full":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if name == "torus":
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        cols = n // rows
        node = lambda r, c: (r % rows) * cols + c % cols  # noqa: E731
        return [e for r in range(rows) for c in range(cols) for e in ((node(r, c), node(r + 1, c)), (node(r, c), node(r, c + 1)))]
    if name == "social":
        import networkx as nx

        graph = nx.florentine_families_graph()
        index = {name: i for i, name in enumerate(sorted(graph.nodes))}
        return [(index[a], index[b]) for a, b in graph.edges]
    raise UnknownNameError(f"topology must be one of {TOPOLOGIES} (got {name!r})")


def build_topology(name: str, num_nodes: int, mixing: str = "metropolis") -> Topology:
    """The named graph on ``num_nodes`` nodes with ``mixing`` weights (``metropolis`` or the published
    ``row-normalised``)."""
    if mixing not in MIXINGS:
        raise UnknownNameError(f"mixing must be one of {MIXINGS} (got {mixing!r})")
    if not isinstance(num_nodes, int) or num_nodes < 2:
        raise ConfigError(f"num_nodes must be an int >= 2 (got {num_nodes!r}); decentralized learning needs neighbours")
    if name == "social" and num_nodes != SOCIAL_NODES:
        raise ConfigError(f"topology 'social' is the {SOCIAL_NODES}-node Florentine families graph; pass --nodes {SOCIAL_NODES}")
    edges = _edges(name, num_nodes)
    w = metropolis_hastings(num_nodes, edges) if mixing == "metropolis" else row_normalised(num_nodes, edges)
    neighbours = tuple(tuple(int(j) for j in np.flatnonzero(w[i]) if j != i) for i in range(num_nodes))
    return Topology(name, w, neighbours, mixing)
