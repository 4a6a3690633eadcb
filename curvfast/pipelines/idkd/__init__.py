"""Decentralized learning with in-distribution knowledge distillation (torchrun) -> run folder (docs/idkd.md).

Trains --nodes models on a graph (QGM gossip, Dirichlet non-IID shards of --dataset: digits by default), then compares fine-tuning
with IDKD (in-distribution-filtered public labels from neighbours), vanilla KD and plain
decentralized SGD. Nodes are torch.distributed processes (gloo on CPU, NCCL on GPU) that exchange
parameters and labels with their graph neighbours only; standalone, the command starts them with
torchrun itself, inside an outer torchrun every process runs its own node. Writes results.json,
accuracy.png and config.json to --out.
"""
from curvfast.pipelines.idkd.comm import NeighbourComm, NeighbourError
from curvfast.pipelines.idkd.data import DecentralizedData, build_data
from curvfast.pipelines.idkd.detectors import calibrated_threshold, node_scores, published_msp_accepts
from curvfast.pipelines.idkd.labels import aggregate_labels, select_public
from curvfast.pipelines.idkd.launch import launch
from curvfast.pipelines.idkd.optim import ALGORITHMS, DecentralizedSGD
from curvfast.pipelines.idkd.partition import PARTITIONS, class_histogram, dirichlet_partition, iid_partition
from curvfast.pipelines.idkd.config import PUBLISHED
from curvfast.pipelines.idkd.pipeline import METHODS, PRESETS, Config, run, summary
from curvfast.pipelines.idkd.topology import (MIXINGS, TOPOLOGIES, Topology, build_topology, metropolis_hastings,
                                             row_normalised)

__all__ = [
    "Config", "PRESETS", "PUBLISHED", "run", "summary", "published_msp_accepts", "MIXINGS", "row_normalised",
    "NeighbourComm", "NeighbourError", "METHODS", "DecentralizedData", "build_data",
    "calibrated_threshold", "node_scores", "aggregate_labels", "select_public", "launch",
    "ALGORITHMS", "DecentralizedSGD", "PARTITIONS", "class_histogram", "dirichlet_partition", "iid_partition", "TOPOLOGIES", "Topology",
    "build_topology", "metropolis_hastings",
]
