"""Diversity learning: an extra gradient on G's output that pushes a batch's samples apart.

For every pair (i, j) of samples and every output value, with d = x_i - x_j,

    phi(d) = sign(d) * 0.05 * (1.05 / (d**2 + 0.05) - 1)

is the direction x_i should move: 1 at d = 0, falling to 0 at |d| = 1 (the difference worth having
in tanh's [-1, 1] range) and slightly negative beyond (a weak pull back). Sample i gets the mean of
phi over its B - 1 partners, push_i; G's output receives

    grad_i = -weight * push_i / (B * sqrt(V))        V = values per sample (C*H*W)

as an extra gradient, added to the adversarial one through `diversity_term`. The 1/B is a batch
mean's, so `weight` does not depend on the batch size; the 1/sqrt(V) keeps the push's norm per
sample independent of the image size, so its strength against the adversarial gradient does not
jump when progressive growing doubles the resolution (measured at init: a 64x64 push's norm is 4.7x
a 16x16 one's without it, 1.2x with it).

    loss_g = adversarial + diversity_term(fake_BCHW, weight=0.3)   # same value, extra gradient

Tests: .venv/bin/python -m pytest tests/test_progressive.py -k diversity
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def phi(d: Tensor) -> Tensor:
    """The pairwise push: sign(d) * 0.05 * (1.05 / (d^2 + 0.05) - 1)."""
    return torch.sign(d) * 0.05 * (1.05 / (d * d + 0.05) - 1.0)


def diversity_push(x_B: Tensor) -> tuple[Tensor, Tensor]:
    """(push, pair distance): push[i] = mean over j != i of phi(x[i] - x[j]) per value (x's shape),
    and the mean |x_i - x_j| over all pairs i != j and values (a 0-dim diversity measure).
    One partner at a time: memory stays O(B x values) instead of O(B^2 x values)."""
    n = x_B.shape[0]
    x = x_B.detach().float()   # fp32 even under bf16 autocast: phi is steep near 0
    push = torch.zeros_like(x)
    if n < 2:
        return push, x.new_zeros(())
    dist = x.new_zeros(())
    for j in range(n):
        d = x - x[j]                  # row j is zero: phi(0) = 0 and |0| adds nothing
        push += phi(d)
        dist = dist + d.abs().mean() * n
    return push / (n - 1), dist / (n * (n - 1))


def diversity_term(x_B: Tensor, *, weight: float, push: Tensor | None = None) -> Tensor:
    """A term whose value is 0 and whose gradient with respect to x_B is -weight * push / (B sqrt(V)): added
    to G's loss, gradient descent moves each sample's values away from its close partners.
    `push` is diversity_push(x_B)[0] when the caller has it already."""
    if push is None:
        push, _ = diversity_push(x_B)
    grad = (-(weight / (x_B.shape[0] * math.sqrt(x_B[0].numel()))) * push).to(x_B.dtype)
    # (x - x.detach()) is 0 in value but carries x's graph: the term only injects the gradient.
    return ((x_B - x_B.detach()) * grad).sum()
