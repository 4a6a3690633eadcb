"""Decentralized learning with in-distribution knowledge distillation (IDKD, docs/idkd.md).

Nodes are ``torch.distributed`` processes (gloo on CPU, NCCL on GPU) that exchange parameters and
labels with their graph neighbours only. See ``docs/idkd.md``.
"""
from curvfast.pipelines.idkd.comm import NeighbourComm, NeighbourError
from curvfast.pipelines.idkd.config import METHODS, IDKDConfig
from curvfast.pipelines.idkd.data import DecentralizedData, build_data
from curvfast.pipelines.idkd.detectors import DETECTORS, calibrated_threshold, knn_score, msp
from curvfast.pipelines.idkd.labels import aggregate_labels, select_public
from curvfast.pipelines.idkd.launch import IDKDRunError, launch
from curvfast.pipelines.idkd.optim import ALGORITHMS, DecentralizedSGD
from curvfast.pipelines.idkd.partition import class_histogram, dirichlet_partition
from curvfast.pipelines.idkd.topology import TOPOLOGIES, Topology, build_topology, metropolis_hastings

__all__ = [
    "NeighbourComm", "NeighbourError", "METHODS", "IDKDConfig", "DecentralizedData", "build_data", "DETECTORS",
    "calibrated_threshold", "knn_score", "msp", "aggregate_labels", "select_public", "IDKDRunError", "launch",
    "ALGORITHMS", "DecentralizedSGD", "class_histogram", "dirichlet_partition", "TOPOLOGIES", "Topology",
    "build_topology", "metropolis_hastings",
]
