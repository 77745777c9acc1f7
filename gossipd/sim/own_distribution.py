"""What personalisation buys, measured in the simulator.

A peer of a skewed split sees a few labels; what it wants from its model is accuracy on examples like its
own. The test set is one global set, so a peer's *own-distribution accuracy* reweights it: the per-class
accuracies averaged with the peer's training label frequencies, Σ_c p_c · acc_c. That is the expected
accuracy on test examples drawn with the peer's label distribution (the classes' inputs look alike on
every peer in these splits: only the label mix differs), with no sampling noise on top.

The other side of the trade: a personalised model's *averaged* accuracy, on the global test set, with its
personal part replaced by the mean of every peer's, as if the swarm had mixed those tensors too.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gossipd.data.spec import ArrayDataset, Kind
from gossipd.train.trainer import EVAL_BATCH, Evaluation, loss_and_hits


@dataclass(frozen=True)
class ClassCounts:
    """One model's test predictions per true class."""

    hits: torch.Tensor  # (C,) correct predictions among the examples of each class
    totals: torch.Tensor  # (C,) examples of each class
    loss: float  # mean cross-entropy over all of them

    def evaluation(self) -> Evaluation:
        count = int(self.totals.sum())
        accuracy = float(self.hits.sum()) / count if count else float("nan")
        return Evaluation(loss=self.loss, accuracy=accuracy, samples=count)

    def reweighted(self, distribution: torch.Tensor) -> float:
        """Accuracy under another label distribution (frequencies per class); classes the test set lacks
        are left out and the rest renormalised."""
        present = self.totals > 0
        weights = distribution.double() * present
        if float(weights.sum()) == 0.0:
            return float("nan")
        per_class = torch.where(present, self.hits.double() / self.totals.clamp(min=1).double(), 0.0)
        return float((weights * per_class).sum() / weights.sum())


def label_distribution(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """The frequency of each class among `labels`."""
    counts = torch.bincount(labels.reshape(-1).long().cpu(), minlength=classes).double()
    return counts / counts.sum().clamp(min=1.0)


@torch.no_grad()
def evaluate_by_class(
    model: nn.Module, data: ArrayDataset, classes: int, *, kind: Kind, device: torch.device, max_samples: int | None
) -> ClassCounts:
    """Predictions on (up to `max_samples` of) `data`, counted per true class, in the same batches and with
    the same loss as `Trainer.evaluate`; the model returns to training mode."""
    count = len(data) if max_samples is None else min(len(data), max_samples)
    hits = torch.zeros(classes, dtype=torch.long)
    totals = torch.zeros(classes, dtype=torch.long)
    loss_sum = 0.0
    model.eval()
    for start in range(0, count, EVAL_BATCH):
        x = data.inputs(slice(start, min(start + EVAL_BATCH, count)), device)
        y = data.y[start : min(start + EVAL_BATCH, count)].to(device)
        logits = model(x)
        loss, _ = loss_and_hits(kind, logits, y)
        loss_sum += float(loss) * y.numel()
        right = (logits.argmax(dim=-1) == y).long().cpu()
        labels = y.long().cpu()
        totals += torch.bincount(labels, minlength=classes)
        hits += torch.bincount(labels, weights=right.double(), minlength=classes).long()
    model.train()
    return ClassCounts(hits=hits, totals=totals, loss=loss_sum / count if count else float("nan"))


def with_averaged_personal(models: Sequence[nn.Module], which: int, personal: frozenset[str]) -> nn.Module:
    """A copy of `models[which]` whose `personal` state entries are the mean of every model's."""
    states = [m.state_dict() for m in models]
    average = {name: torch.stack([s[name].double() for s in states]).mean(dim=0) for name in personal}
    model = copy.deepcopy(models[which])
    own = model.state_dict()
    model.load_state_dict({**own, **{n: t.to(own[n].dtype) for n, t in average.items()}})
    return model
