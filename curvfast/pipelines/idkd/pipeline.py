"""``curvfast idkd``: the settings of a run (:class:`Config`, handed to every node process as JSON)
and :func:`run`, which starts the node processes with torchrun (or, inside an outer torchrun, runs
this process's node).

IDKD (Ravikumar et al., "Homogenizing non-IID datasets via in-distribution knowledge distillation
for decentralized learning"): after decentralized training, every node labels the public samples
its calibrated in-distribution filter accepts, neighbours exchange and average those soft labels
with the mixing weights, and every node fine-tunes on private + labelled public data.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields


from curvfast import parse_device
from curvfast.pipelines.common.contract import option, run_folder
from curvfast.pipelines.common.data import DataOptions, load_split
from curvfast.pipelines.idkd.detectors import DETECTORS
from curvfast.pipelines.idkd.launch import launch
from curvfast.pipelines.idkd.optim import ALGORITHMS
from curvfast.pipelines.idkd.partition import PARTITIONS
from curvfast.pipelines.idkd.report import format_table
from curvfast.pipelines.idkd.topology import TOPOLOGIES, build_topology

__all__ = ["Config", "PRESETS", "run", "summary", "METHODS"]

METHODS = ("dsgd", "vanilla_kd", "idkd")
DEFAULT_NODES = 4
WIDTH_MODELS = ("small_cnn", "mlp", "mlp2")  # zoo models that take --width

PRESETS = {
    "smoke": {"nodes": 2, "epochs": 1, "finetune_epochs": 1, "width": 8, "batch_size": 16, "public_photos": 50},
    # The published code's defaults (docs/idkd.md, "Paper scale"): CIFAR-10 private data on a 16-node ring,
    # Dirichlet alpha 0.1, QGM with momentum 0.9, batch 32, weight decay 1e-4, lr 0.01 (1e-4 after its step
    # decays, i.e. during the label-exchange phase), crop-flip; the public set is Tiny ImageNet's train split
    # (an image folder: --public-root), resized to 32 px; labels exchanged from epoch 241 on, every 5 epochs
    # (300 epochs assumed). Its ResNet-20 (EvoNorm) is not in the zoo: the CIFAR ResNet-18 stands in.
    "paper": {"dataset": "cifar10", "image_size": 32, "model": "cifar_resnet18", "normalize": "cifar10",
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
    detector: str = option("msp", "IDKD's in-distribution filter: msp (max softmax probability, the paper's) or knn "
                                  "(k-th nearest-neighbour distance to the node's own penultimate features)",
                           choices=DETECTORS)
    knn_k: int = option(5, "k of the knn detector")
    tpr: float = option(0.95, "the calibrated threshold accepts this share of a node's own held-out data")
    temperature: float = option(1.0, "soft labels are softmax(logits / T)")
    device: str = option("cpu")
    timeout: float = option(60.0, "seconds before a neighbour exchange is declared failed")
    node_threads: int = option(1, "torch CPU threads of each node process")
    quiet: bool = option(False)
    fail_node: int | None = option(None, "fault injection: this node raises at --fail-step of the initial training")
    fail_step: int = option(0, "the step of --fail-node's injected failure")

    def validate(self) -> "Config":
        """Check every setting (``ValueError`` naming the option) and resolve ``nodes`` (None: torchrun's
        ``WORLD_SIZE``, else 4). Returns the config."""
        if self.nodes is None:
            world = os.environ.get("WORLD_SIZE")
            self.nodes = int(world) if world else DEFAULT_NODES
        self.check_data_options()
        if self.partition not in PARTITIONS:
            raise ValueError(f"--partition must be one of {PARTITIONS} (got {self.partition!r})")
        if self.public_dataset is not None and self.public_root is None:
            raise ValueError(f"--public-dataset {self.public_dataset} needs --public-root <folder holding it>")
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"--methods must be a non-empty subset of {METHODS} (got {list(self.methods)})")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"--topology must be one of {TOPOLOGIES} (got {self.topology!r})")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm must be one of {ALGORITHMS} (got {self.algorithm!r})")
        if self.detector not in DETECTORS:
            raise ValueError(f"--detector must be one of {DETECTORS} (got {self.detector!r})")
        if self.nodes < 2:
            raise ValueError(f"--nodes must be >= 2 (got {self.nodes})")
        build_topology(self.topology, self.nodes)  # e.g. 'social' needs 15 nodes
        for name in ("epochs", "finetune_epochs", "exchange_every", "batch_size", "width", "node_threads", "knn_k",
                     "min_samples"):
            if getattr(self, name) < (0 if "epochs" in name or "every" in name else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if not (self.dirichlet_alpha > 0 and self.timeout > 0 and self.temperature > 0):
            raise ValueError("--dirichlet-alpha, --timeout and --temperature must be positive")
        if not 0 <= self.public_fraction < 1:
            raise ValueError(f"--public-fraction must be in [0, 1) (got {self.public_fraction})")
        if self.public_fraction == 0 and not self.public_photos and self.public_dataset is None:
            raise ValueError("--public-fraction 0 leaves the public set empty: give --public-photos N or --public-dataset")
        if not 0 < self.calib_fraction < 1:
            raise ValueError(f"--calib-fraction must be in (0, 1) (got {self.calib_fraction})")
        try:
            parse_device(self.device)  # cuda: each node takes GPU LOCAL_RANK mod the node's GPUs
        except ValueError as err:
            raise ValueError(f"--device: {err}") from None
        if self.fail_node is not None and not 0 <= self.fail_node < self.nodes:
            raise ValueError(f"--fail-node must name a node in [0, {self.nodes}) (got {self.fail_node})")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data}).validate()


def _outer_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def run(config: Config, out: str | None = None) -> dict:
    """Run ``config`` and return the results, which rank 0 writes to ``out/results.json`` with
    ``out/accuracy.png``. Standalone, ``config.nodes`` worker processes are started with torchrun
    (``out/config.json`` is their settings); inside an outer torchrun (``RANK`` and ``WORLD_SIZE``
    set) this process runs its own node and every node returns the same results. A failed node
    raises :class:`~curvfast.pipelines.common.contract.RunFailed` naming the node that failed first."""
    config.validate()
    with run_folder(out) as folder:
        if _outer_torchrun():
            from curvfast.pipelines.idkd.worker import run_process  # joins the process group

            if int(os.environ["WORLD_SIZE"]) != config.nodes:
                raise ValueError(f"--nodes {config.nodes} differs from torchrun's WORLD_SIZE {os.environ['WORLD_SIZE']}")
            results = run_process(config, folder)
        else:
            for split in ("train", "test"):  # a missing dataset or split fails here, before any node starts
                load_split(config, split)
            results = launch(config, folder)
    if not config.quiet and int(os.environ.get("RANK", 0)) == 0:
        print(format_table(results))
    return results


def summary(results: dict) -> dict:
    """What ``curvfast idkd`` prints: the mean test accuracy of the initial model and of every method, the run time."""
    return {"initial_accuracy": results["initial"]["mean_accuracy"],
            "mean_accuracy": {m: v["mean_accuracy"] for m, v in results["methods"].items()},
            "seconds": results["seconds"]}
