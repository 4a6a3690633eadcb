"""Without pytorch-ood installed (as on the GPU machines), curvfast.ood's detectors keep their
pytorch-ood-shaped API, so ``curvfast ood`` runs unchanged."""
import subprocess
import sys

from conftest import REPO

CODE = """
import sys
sys.modules["pytorch_ood"] = None  # importing pytorch_ood now raises ImportError
import torch
from torch.utils.data import DataLoader, TensorDataset
from curvfast.ood import NormScaling, RequiresFittingError
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
with torch.no_grad():
    model[0].weight.copy_(torch.eye(3, 4)); model[0].bias.zero_()
x = torch.eye(3, 4).repeat(10, 1) + 0.1 * torch.randn(30, 4)
y = torch.arange(30) % 3
det = NormScaling(model)
try:
    det(x)
    raise SystemExit("predict before fit must raise")
except RequiresFittingError:
    pass
scores = det.fit(DataLoader(TensorDataset(x, y), batch_size=8))(x)
assert scores.shape == (30,) and torch.isfinite(scores).all()
print("ok")
"""


def test_pytorch_ood_api_without_pytorch_ood():
    root = str(REPO)
    out = subprocess.run([sys.executable, "-c", CODE], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
