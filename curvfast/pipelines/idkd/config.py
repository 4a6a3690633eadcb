"""The settings of an IDKD run (:class:`Config`, handed to every node process as JSON) and its presets,
shared by the launcher (``pipeline``) and the node processes (``worker``)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from curvfast import parse_device
from curvfast.errors import ConfigError, UnknownNameError
from curvfast.ood import DETECTORS
from curvfast.pipelines.common.contract import check_model, option
from curvfast.pipelines.common.data import DataOptions
from curvfast.pipelines.idkd.optim import ALGORITHMS
from curvfast.pipelines.idkd.partition import PARTITIONS
from curvfast.pipelines.idkd.topology import MIXINGS, TOPOLOGIES, build_topology

__all__ = ["Config", "PRESETS", "METHODS", "WIDTH_MODELS", "DEFAULT_NODES", "PUBLISHED", "filters"]

METHODS = ("dsgd", "vanilla_kd", "idkd")
DEFAULT_NODES = 4
WIDTH_MODELS = ("small_cnn", "mlp", "mlp2")  # zoo models that take --width

# What --published turns on: the published code's choices where curvfast's default differs (docs/idkd.md,
# Deviations). utils/graph_manager.py: row-normalised (A + I); train_idkd.py: accept a public sample when
# max softmax(f(x) / T) > --conf_threshold 0.98 (a fixed threshold, not one calibrated per node).
PUBLISHED = {"mixing": "row-normalised", "msp_threshold": 0.98}


def filters() -> tuple[str, ...]:
    """The curvfast.ood detectors that can filter the public set: every registered one that scores a plain K-class
    classifier (VRM's auxiliary (K+1)-th output does not exist on an IDKD node's model)."""
    return tuple(name for name, cls in DETECTORS.items() if not cls.auxiliary_class)


PRESETS = {
    "smoke": {"nodes": 2, "epochs": 1, "finetune_epochs": 1, "width": 8, "batch_size": 16, "public_photos": 50},
    # The published code's defaults (docs/idkd.md, "Paper scale"): CIFAR-10 private data on a 16-node ring,
    # Dirichlet alpha 0.1, QGM with momentum 0.9, batch 32, weight decay 1e-4, lr 0.01 (1e-4 after its step
    # decays, i.e. during the label-exchange phase), crop-flip; the public set is Tiny ImageNet's train split
    # (an image folder: --public-root), resized to 32 px; labels exchanged from epoch 241 on, every 5 epochs
    # (300 epochs assumed); its filter is MSP > 0.98 (PUBLISHED; its ring's row-normalised weights are our 1/3).
    # Its ResNet-20 (EvoNorm) is not in the zoo: the CIFAR ResNet-18 stands in.
    "paper": {**PUBLISHED, "dataset": "cifar10", "image_size": 32, "model": "cifar_resnet18", "normalize": "cifar10",
              "augment": "crop-flip", "nodes": 16, "topology": "ring", "dirichlet_alpha": 0.1, "epochs": 240,
              "finetune_epochs": 60, "exchange_every": 5, "batch_size": 32, "lr": 0.01, "finetune_lr": 1e-4,
              "weight_decay": 1e-4, "public_fraction": 0.0, "public_photos": 0, "public_dataset": "imagefolder",
              "device": "cuda", "workers": 2, "node_threads": 2},
}


@dataclass
class Config(DataOptions):
    """Settings of an IDKD run (defaults: the published recipe scaled to 8x8 digits)."""

    nodes: int | None = option(None, f"number of nodes (default {DEFAULT_NODES}; under torchrun: WORLD_SIZE)")
    topology: str = option("ring", "ring, torus, social (the 15-node Florentine families graph) or full",
                           choices=TOPOLOGIES)
    mixing: str = option("metropolis", "gossip weights: metropolis (Metropolis-Hastings, doubly stochastic) or "
                                       "row-normalised (A + I, each row divided by its sum: the published code's); "
                                       "equal on ring, torus and full", choices=MIXINGS)
    partition: str = option("dirichlet", "split of the private data across nodes: dirichlet (non-IID, per class) or iid",
                            choices=PARTITIONS)
    dirichlet_alpha: float = option(0.1, "Dirichlet concentration of the non-IID split (smaller = more skewed)")
    min_samples: int = option(10, "every node holds at least this many private samples (the split is redrawn until it does)")
    seed: int = option(0)
    methods: tuple[str, ...] = option(METHODS, "methods to compare", choices=METHODS)
    algorithm: str = option("qgm", "qgm (quasi-global momentum) or dsgdm (local momentum)", choices=ALGORITHMS)
    model: str = option("small_cnn")
    width: int = option(16, f"width of the zoo models that take one ({', '.join(WIDTH_MODELS)})")
    epochs: int = option(30, "initial decentralized training, in epochs of the private set")
    finetune_epochs: int = option(10, "fine-tuning epochs of private + public data (same steps for every method)")
    batch_size: int = option(32)
    lr: float = option(0.05, "step size of the initial training")
    finetune_lr: float = option(0.02, "step size of the fine-tuning")
    momentum: float = option(0.9, "momentum beta of decentralized SGD")
    weight_decay: float = option(5e-4, "weight decay (L2) added to every node's gradient")
    public_fraction: float = option(0.25, "share of the dataset's train split held out as the unlabeled public set "
                                          "(0: none; the public set is then --public-dataset and the photo patches)")
    public_photos: int | None = option(None, "real-photo patches added to the public set (default: as many as held-out images)")
    public_dataset: str | None = option(None, "a second dataset whose train split joins the public set as foreign "
                                              "unlabeled images (read from --public-root)")
    public_root: str | None = option(None, "folder holding --public-dataset")
    exchange_every: int = option(0, "during fine-tuning, every N epochs each node re-sends its aggregated public labels to "
                                    "its neighbours and aggregates theirs, as published (0: one exchange, before fine-tuning)")
    calib_fraction: float = option(0.2, "share of each node's data held out to calibrate its in-distribution threshold")
    detector: str = option("msp", "IDKD's in-distribution filter, a curvfast.ood detector: msp (max softmax probability, "
                                  "the paper's), knn (k-th nearest-neighbour distance to the node's own penultimate "
                                  "features), curvature (input loss curvature at the predicted class), ...",
                           choices=filters)
    knn_k: int = option(5, "k of the knn detector")
    tpr: float = option(0.95, "the calibrated threshold accepts this share of a node's own held-out data")
    msp_threshold: float | None = option(None, "with --detector msp: accept the public samples whose max "
                                               "softmax(logits / T) exceeds this fixed value, as published (0.98), "
                                               "instead of a threshold calibrated with --tpr (none: calibrated)")
    published: bool = option(False, "the published code's choices where ours differ: --mixing row-normalised "
                                    "--msp-threshold 0.98 (docs/idkd.md, Deviations)")
    temperature: float = option(1.0, "soft labels are softmax(logits / T)")
    device: str = option("cpu")
    timeout: float = option(60.0, "seconds before a neighbour exchange is declared failed")
    node_threads: int = option(1, "torch CPU threads of each node process")
    quiet: bool = option(False)
    fail_node: int | None = option(None, "fault injection: this node raises at --fail-step of the initial training")
    fail_step: int = option(0, "the step of --fail-node's injected failure")

    def validate(self) -> "Config":
        """Check every setting (:class:`~curvfast.errors.ConfigError` naming the option) and resolve ``nodes`` (None: torchrun's
        ``WORLD_SIZE``, else 4). Returns the config."""
        if self.nodes is None:
            world = os.environ.get("WORLD_SIZE")
            self.nodes = int(world) if world else DEFAULT_NODES
        if self.published:  # recorded in settings as the values used
            self.mixing = PUBLISHED["mixing"]
            if self.msp_threshold is None:
                self.msp_threshold = PUBLISHED["msp_threshold"]
        self.check_data_options()
        check_model(self.model)  # here, before the nodes start (one line, not one per node)
        if self.partition not in PARTITIONS:
            raise ConfigError(f"--partition must be one of {PARTITIONS} (got {self.partition!r})")
        if self.public_dataset is not None and self.public_root is None:
            raise ConfigError(f"--public-dataset {self.public_dataset} needs --public-root <folder holding it>")
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"--methods must be a non-empty subset of {METHODS} (got {list(self.methods)})")
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"--topology must be one of {TOPOLOGIES} (got {self.topology!r})")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"--algorithm must be one of {ALGORITHMS} (got {self.algorithm!r})")
        if self.detector not in filters():
            why = (f"; {self.detector} scores the auxiliary (K+1)-th output of a model trained for it, which an IDKD "
                   "node's K-class model lacks" if self.detector in DETECTORS else "")
            raise UnknownNameError(f"--detector must be one of {', '.join(filters())} (got {self.detector!r}{why})")
        if self.mixing not in MIXINGS:
            raise UnknownNameError(f"--mixing must be one of {MIXINGS} (got {self.mixing!r})")
        if self.msp_threshold is not None:
            if self.detector != "msp":
                raise ConfigError(f"--msp-threshold (set by --published) applies to --detector msp, not "
                                  f"{self.detector!r}; drop it or use --detector msp")
            if not 0 <= self.msp_threshold < 1:
                raise ConfigError(f"--msp-threshold must be in [0, 1) (got {self.msp_threshold})")
        if self.nodes < 2:
            raise ConfigError(f"--nodes must be >= 2 (got {self.nodes})")
        build_topology(self.topology, self.nodes, self.mixing)  # e.g. 'social' needs 15 nodes
        for name in ("epochs", "finetune_epochs", "exchange_every", "batch_size", "width", "node_threads", "knn_k",
                     "min_samples"):
            if getattr(self, name) < (0 if "epochs" in name or "every" in name else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if not (self.dirichlet_alpha > 0 and self.timeout > 0 and self.temperature > 0):
            raise ConfigError("--dirichlet-alpha, --timeout and --temperature must be positive")
        if not 0 <= self.public_fraction < 1:
            raise ConfigError(f"--public-fraction must be in [0, 1) (got {self.public_fraction})")
        if self.public_fraction == 0 and not self.public_photos and self.public_dataset is None:
            raise ConfigError("--public-fraction 0 leaves the public set empty: give --public-photos N or --public-dataset")
        if not 0 < self.calib_fraction < 1:
            raise ConfigError(f"--calib-fraction must be in (0, 1) (got {self.calib_fraction})")
        try:
            parse_device(self.device)  # cuda: each node takes GPU LOCAL_RANK mod the node's GPUs
        except ValueError as err:
            raise ConfigError(f"--device: {err}") from None
        if self.fail_node is not None and not 0 <= self.fail_node < self.nodes:
            raise ConfigError(f"--fail-node must name a node in [0, {self.nodes}) (got {self.fail_node})")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data}).validate()
