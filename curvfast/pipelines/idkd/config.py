"""Settings of an IDKD run, shared by the launcher and every worker process (as JSON)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from curvfast.pipelines.idkd.detectors import DETECTORS
from curvfast.pipelines.idkd.optim import ALGORITHMS
from curvfast.pipelines.idkd.topology import TOPOLOGIES, build_topology

__all__ = ["IDKDConfig", "METHODS"]

METHODS = ("dsgd", "vanilla_kd", "idkd")


@dataclass
class IDKDConfig:
    out: str
    nodes: int = 4
    topology: str = "ring"
    alpha: float = 0.1
    seed: int = 0
    methods: tuple = METHODS
    algorithm: str = "qgm"
    width: int = 16                 # SmallCNN width
    epochs: int = 30                # initial decentralized training (epochs of the global private set)
    finetune_epochs: int = 10       # fine-tuning phase, same number of steps for every method
    batch_size: int = 32
    lr: float = 0.05
    finetune_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    public_fraction: float = 0.25   # share of the digits' train split held out as public (unlabeled)
    public_photos: int | None = None  # real-photo patches in the public set (None: as many as held-out digits)
    calib_fraction: float = 0.2     # share of each node's private data held out for MSP calibration
    detector: str = "msp"           # IDKD's in-distribution score: msp (the paper's) or knn (feature distance)
    knn_k: int = 5                  # k of the knn detector
    tpr: float = 0.95               # calibrated MSP threshold keeps this share of local in-distribution data
    temperature: float = 1.0        # soft labels softmax(z / T)
    device: str = "cpu"
    timeout: float = 60.0           # seconds before a point-to-point exchange is declared failed
    threads: int = 1                # torch threads per worker process
    quiet: bool = False
    fail_node: int | None = None    # fault injection (tests): this node raises at step ``fail_step``
    fail_step: int = 0

    def validate(self) -> "IDKDConfig":
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS} (got {list(self.methods)})")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"--topology must be one of {TOPOLOGIES} (got {self.topology!r})")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm must be one of {ALGORITHMS} (got {self.algorithm!r})")
        if self.detector not in DETECTORS:
            raise ValueError(f"--detector must be one of {DETECTORS} (got {self.detector!r})")
        if self.nodes < 2:
            raise ValueError(f"--nodes must be >= 2 (got {self.nodes})")
        build_topology(self.topology, self.nodes)  # e.g. 'social' needs 15 nodes
        for name in ("epochs", "finetune_epochs", "batch_size", "width", "threads", "knn_k"):
            if getattr(self, name) < (0 if "epochs" in name else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if not (self.alpha > 0 and self.timeout > 0 and self.temperature > 0):
            raise ValueError("--alpha, --timeout and --temperature must be positive")
        if not 0 < self.calib_fraction < 1:
            raise ValueError(f"--calib-fraction must be in (0, 1) (got {self.calib_fraction})")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be 'cpu' or 'cuda' (got {self.device!r})")
        if self.fail_node is not None and not 0 <= self.fail_node < self.nodes:
            raise ValueError(f"--fail-node must name a node in [0, {self.nodes}) (got {self.fail_node})")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "IDKDConfig":
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data}).validate()
