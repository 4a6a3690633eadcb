"""Faithful re-implementations of the published curvature scorers, written from their contract (docs/compat.md).

Each function does what the published one does, step by step and in the same order: the same
``torch.randint_like`` draws on torch's global generator (one per probe, v then u per zero-order pair),
the Python loop that maps the zeros of each row to -1, the ``h * (r + 1e-7)`` probes, one forward pass
per stencil point and probe, the batch-mean loss and the ``v @ grad_diff.T`` diagonal of the
finite-difference scorers, float32 accumulators, ``net.eval()`` where the published code calls it.
tests/compat checks curvfast.compat against them; benchmarks/compat.py times them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rademacher(data, h):
    """The published ``get_rademacher``."""
    v = torch.randint_like(data, high=2)
    for row in v:
        row[row == 0] = -1
    return h * (v + 1e-7)


def modified_entropy(prob, labels):
    """Song & Mittal's modified prediction entropy, as the published scripts compute it."""
    batch, classes = prob.shape
    one_hot = F.one_hot(labels, classes).float()
    right = -(1 - prob[range(batch), labels]) * torch.log(prob[range(batch), labels])
    wrong = prob * (1 - one_hot)
    return right + (-wrong * torch.log(1 - wrong + 1e-9)).sum(dim=1)


def _zo_curvature(net, x, y, h, niter):
    curv = torch.zeros(x.shape[0]).to(x.device)
    criterion = nn.CrossEntropyLoss(reduction="none")
    for _ in range(niter):
        v = rademacher(x, h)
        u = rademacher(x, h)
        t1 = criterion(net(x + v + u), y)
        t2 = criterion(net(x - v + u), y)
        t3 = criterion(net(x + v - u), y)
        t4 = criterion(net(x - v - u), y)
        curv += torch.abs((t1 - t2 - t3 + t4) / (4 * h))
    return curv


def zo_v2(net, x, y, h=1e-3, niter=10, temp=1, device="cpu"):
    """Curvature-Clues precompute_cifar10/100_scores(_dp).py: (curv, loss_pos, max_prob)."""
    with torch.no_grad():
        logits = net(x)
        loss_pos = nn.CrossEntropyLoss(reduction="none")(logits / temp, y)
        max_prob = torch.max(F.softmax(logits, 1), 1)[0]
        curv = _zo_curvature(net, x, y, h, niter)
    return curv / niter, loss_pos, max_prob


def zo_v2_mentr(net, x, y, h=1e-3, niter=10, temp=1, device="cpu"):
    """Curvature-Clues precompute_cifar10/100_mentr_scores.py: (zeros, loss_pos, max_prob, m_entropy)."""
    curv = torch.zeros(x.shape[0]).to(x.device)
    with torch.no_grad():
        logits = net(x)
        loss_pos = nn.CrossEntropyLoss(reduction="none")(logits / temp, y)
        prob = F.softmax(logits, 1)
        max_prob = torch.max(prob, 1)[0]
        m_entropy = modified_entropy(prob, y)
    return curv / niter, loss_pos, max_prob, m_entropy


def zo_imagenet(net, x, y, h=1e-3, niter=10, temp=1, device="cpu", compute_curvature=True):
    """Curvature-Clues precompute_imagenet_scores.py get_curvature_for_batch_zo: (curv, loss, max_prob, m_entropy)."""
    curv = torch.zeros(x.shape[0]).to(x.device)
    with torch.no_grad():
        logits = net(x)
        loss = nn.CrossEntropyLoss(reduction="none")(logits / temp, y)
        prob = F.softmax(logits, 1)
        max_prob = torch.max(prob, 1)[0]
        m_entropy = modified_entropy(prob, y)
        if compute_curvature:
            curv = _zo_curvature(net, x, y, h, niter)
    return curv / niter, loss, max_prob, m_entropy


def fd_loop(net, x, y, h=1e-3, niter=10, temp=1, pred_labels=False):
    """The finite-difference loop every fd variant runs: (curvature, eig_values, correct of the last probe)."""
    net.eval()
    batch = x.shape[0]
    regs, eigs = torch.zeros(batch), torch.zeros(batch)
    criterion = nn.CrossEntropyLoss()
    correct = 0
    for _ in range(niter):
        v = rademacher(x, h).to(x.device)
        x.requires_grad_()
        outputs_pos = net(x + v)
        outputs_orig = net(x)
        if pred_labels:
            y = torch.argmax(outputs_orig, 1).to(torch.long)
        loss_pos = criterion(outputs_pos / temp, y)
        loss_orig = criterion(outputs_orig / temp, y)
        grad_diff = torch.autograd.grad(loss_pos - loss_orig, x)[0]
        regs += grad_diff.reshape(batch, -1).norm(dim=1).cpu().detach()
        eigs += torch.diag(torch.matmul(v.reshape(batch, -1), grad_diff.reshape(batch, -1).T)).cpu().detach()
        with torch.no_grad():
            correct = torch.eq(torch.argmax(outputs_orig, 1), y).sum().item()
    return regs / niter, eigs / niter, correct


def find_z(net, x, y, h):
    """Privacy-Memorization-Curvature CurveScore.find_z: (z, norm_grad); x must be 4-D, as there."""
    net = net.eval()
    x.requires_grad_()
    _ = net(x)
    loss = nn.CrossEntropyLoss()(net(x), y)
    loss.backward()
    grad = x.grad.data + 0.0
    norm_grad = grad.norm().item()
    z = torch.sign(grad).detach() + 0.0
    z = 1.0 * h * (z + 1e-7) / (z.reshape(z.size(0), -1).norm(dim=1)[:, None, None, None] + 1e-7)
    x.grad.zero_()
    net.zero_grad()
    return z, norm_grad


def rank_samples(model, loader, train_length, temp, pred_labels=False):
    """CurveScore.score_true_labels_with_comparison: regularizer(h=1e-3, niter=10) per batch, in loader order."""
    model.eval()
    scores, labels = torch.zeros(train_length), torch.zeros(train_length)
    start = 0
    for inputs, targets in loader:
        stop = start + inputs.shape[0]
        scores[start:stop] = fd_loop(model, inputs.clone(), targets, temp=temp, pred_labels=pred_labels)[0]
        labels[start:stop] = targets
        start = stop
    return scores, labels
