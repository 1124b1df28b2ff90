"""The gate network and its guarded training (used by the ``gated`` mixer).

Why the guards: a per-byte gate has far more freedom than global weights and overfits small fit sets. So:
  * the output layer starts at zero weights with bias = log w0 (a global solution), so epoch 0 *is* w0;
  * after every epoch the held-out NLL is measured; the best epoch (possibly epoch 0) is kept and training
    stops after ``patience`` epochs without improvement.
Hence the returned gate's held-out NLL is never above w0's. Seeded, without touching the global RNG.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from .inputs import NEG_INF


class GateNet(nn.Module):
    """Standardised features [R, D] → per-teacher scores [R, K]; weights = softmax over present teachers."""

    def __init__(self, in_dim: int, hidden: int, num_teachers: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, num_teachers)

    def start_at(self, log_weights: torch.Tensor) -> None:
        """Output = log_weights for every input: zero head weights, bias = the starting log weights."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(log_weights.to(self.head.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((x.to(self.mean) - self.mean) / self.std))


def gated_nll(scores: torch.Tensor, present: torch.Tensor, realised: torch.Tensor) -> torch.Tensor:
    """Mean NLL (nats) of the per-row linear pool with weights softmax(scores) over the present teachers.

    ``scores`` [R, K], ``present`` bool [R, K], ``realised`` float64 [R, K] log p_k(actual) (-inf if absent).
    Every row must have a present teacher; absent entries get exactly zero gradient.
    """
    log_w = torch.log_softmax(scores.double().masked_fill(~present, NEG_INF), -1)
    return -torch.logsumexp(log_w + realised, -1).mean()


@contextlib.contextmanager
def one_cpu_thread():
    """Run the gate's training single-threaded, then restore the thread count.

    Why: the gate's tensors are tiny ([1024, ~10] × [10, 32]), so intra-op threads buy nothing, and on a busy
    machine their synchronisation dominates: measured here, one Adam step took 29 ms with 2 threads and 0.9 ms
    with 1 while another process kept a core busy.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Split:
    """Rows of one split: features [R, D], present [R, K], realised log-probs [R, K] (float64)."""

    x: torch.Tensor
    present: torch.Tensor
    realised: torch.Tensor

    def nll(self, scores: torch.Tensor) -> float:
        return float(gated_nll(scores, self.present, self.realised))

    def constant_nll(self, log_weights: torch.Tensor) -> float:
        """NLL of the same weights at every row."""
        return self.nll(log_weights.float().expand(self.x.shape[0], -1))


@dataclass
class TrainResult:
    net: GateNet
    heldout_nll: float  # nats per row, best epoch
    start_heldout_nll: float
    best_epoch: int
    epochs_run: int


def train_gate(train: Split, held: Split, start: torch.Tensor, *, hidden: int, epochs: int, lr: float,
               batch_size: int, patience: int, weight_decay: float, seed: int) -> TrainResult:
    """Adam on the training split from ``start`` log weights, early-stopped on the held-out split."""
    k = train.present.shape[1]
    with one_cpu_thread():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = GateNet(train.x.shape[1], hidden, k)
        mean = train.x.mean(0)
        std = train.x.std(0, unbiased=False) if train.x.shape[0] > 1 else torch.ones_like(mean)
        net.mean, net.std = mean.float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float()
        net.start_at(start)
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)

        def evaluate() -> float:
            net.eval()
            with torch.no_grad():
                return held.nll(net(held.x))

        best = start_nll = evaluate()
        best_state, best_epoch, stale, epoch = copy.deepcopy(net.state_dict()), 0, 0, 0
        n = train.x.shape[0]
        for epoch in range(1, epochs + 1):
            net.train()
            for batch in torch.randperm(n, generator=order).split(batch_size):
                loss = gated_nll(net(train.x[batch]), train.present[batch], train.realised[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            current = evaluate()
            if current < best:
                best, best_state, best_epoch, stale = current, copy.deepcopy(net.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= patience:
                    break
        net.load_state_dict(best_state)
    return TrainResult(net.eval(), best, start_nll, best_epoch, epoch)
