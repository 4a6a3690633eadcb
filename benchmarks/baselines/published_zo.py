"""The published zero-order curvature (Curvature Clues) as its code runs it.

Per image: 2 views (identity, horizontal flip), each with 1 clean forward and 4 forwards for
each of n = 10 probe pairs (v, u), h = 1e-3; loss values only:

    zo(x) = mean_k |L(x+hv+hu) − L(x−hv+hu) − L(x+hv−hu) + L(x−hv−hu)| / (4h)

Returns the score of the identity view (B,) after doing the work of both views, as published.
"""
import torch
import torch.nn.functional as F


@torch.no_grad()
def published_zo(model, x, y, probes: int = 10, h: float = 1e-3, generator=None) -> torch.Tensor:
    out = []
    for view in (x, x.flip(-1)):
        F.cross_entropy(model(view), y, reduction="none")  # the clean loss, computed per view
        acc = torch.zeros(x.shape[0])
        for _ in range(probes):
            v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x) * 2 - 1
            u = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x) * 2 - 1
            terms = [F.cross_entropy(model(view + h * (a * v + b * u)), y, reduction="none")
                     for a, b in ((1, 1), (-1, 1), (1, -1), (-1, -1))]
            acc += ((terms[0] - terms[1] - terms[2] + terms[3]).abs() / (4 * h)).cpu()
        out.append(acc / probes)
    return out[0]
