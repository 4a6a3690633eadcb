"""Decentralized learning with in-distribution knowledge distillation (IDKD, docs/idkd.md).

Nodes are ``torch.distributed`` processes (gloo on CPU, NCCL on GPU) that exchange parameters and
labels with their graph neighbours only. See ``docs/idkd.md``.
"""
from .comm import NeighbourComm, NeighbourError
from .config import METHODS, IDKDConfig
from .data import DecentralizedData, build_data
from .detectors import DETECTORS, calibrated_threshold, knn_score, msp
from .labels import aggregate_labels, select_public
from .launch import IDKDRunError, launch
from .optim import ALGORITHMS, DecentralizedSGD
from .partition import class_histogram, dirichlet_partition
from .topology import TOPOLOGIES, Topology, build_topology, metropolis_hastings

__all__ = [
    "NeighbourComm", "NeighbourError", "METHODS", "IDKDConfig", "DecentralizedData", "build_data", "DETECTORS",
    "calibrated_threshold", "knn_score", "msp", "aggregate_labels", "select_public", "IDKDRunError", "launch",
    "ALGORITHMS", "DecentralizedSGD", "class_histogram", "dirichlet_partition", "TOPOLOGIES", "Topology",
    "build_topology", "metropolis_hastings",
]
