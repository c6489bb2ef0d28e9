"""Evaluation of a model without a classifier (a DINOv2, CLIP or SAM encoder): the fidelity of
its output features to a reference model's, and a k-NN top-1 where the images have labels.

Fidelity is 100 x the mean cosine similarity of the two models' output features on the same
images (per image; per token, averaged, for per-token features), the quantity the search's
feature objective and feature distillation work on, so a run's three numbers (search,
fine-tuning curve, evaluation) are one measure.

The k-NN top-1 is DINO's protocol (Caron et al., 2021): L2-normalised embeddings, the
``k = 20`` most cosine-similar images of a labelled bank vote with weights
``exp(similarity / 0.07)``. The bank is the calibration split, the queries the test split:
nothing is trained, and the test labels are only compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist
from ..adapters import logits_module
from ..devices import autocast, device_of

#: DINO's k-NN settings (neighbours, temperature)
KNN_K, KNN_T = 20, 0.07


def evaluate_fidelity(model: torch.nn.Module, reference: torch.nn.Module, loader,
                      device: str | torch.device | None = None, amp: bool = False
                      ) -> dict[str, float]:
    """100 x the mean cosine similarity of ``model``'s output features to ``reference``'s
    over ``loader``'s images (summed over ranks under torchrun).

    Returns:
        ``{"fidelity": value in [-100, 100], "n": images}``.
    """
    device = device or device_of(model)
    net, ref = logits_module(model).eval(), logits_module(reference).eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.inference_mode(), autocast(device, amp):
        for x, _ in loader:
            x = x.to(device)
            cos = F.cosine_similarity(net(x).float(), ref(x).float(), dim=-1)
            sums[0] += cos.reshape(len(x), -1).mean(dim=1).sum()
            sums[1] += len(x)
    total, n = dist.all_sum(sums).tolist()
    return {"fidelity": 100.0 * total / max(n, 1), "n": int(n)}


def embeddings(model: torch.nn.Module, loader, device: str | torch.device, amp: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """((n, D) L2-normalised embeddings, (n,) labels) of ``loader``'s images; per-token
    features are averaged over their tokens first."""
    net, feats, labels = logits_module(model).eval(), [], []
    with torch.inference_mode(), autocast(device, amp):
        for x, y in loader:
            out = net(x.to(device)).float()
            feats.append(F.normalize(out.reshape(len(out), -1, out.shape[-1]).mean(dim=1), dim=-1))
            labels.append(torch.as_tensor(y).to(device))
    return torch.cat(feats), torch.cat(labels)


def knn_top1(model: torch.nn.Module, bank_loader, query_loader,
             device: str | torch.device | None = None, *, k: int = KNN_K,
             temperature: float = KNN_T, amp: bool = False) -> float:
    """Weighted k-NN top-1 (%) of ``query_loader``'s images against ``bank_loader``'s labelled
    ones (see the module docstring). Single process: the bank is this process's."""
    device = device or device_of(model)
    bank, bank_y = embeddings(model, bank_loader, device, amp)
    query, query_y = embeddings(model, query_loader, device, amp)
    classes = int(max(bank_y.max(), query_y.max())) + 1
    k = min(k, len(bank))
    correct = 0
    for i in range(0, len(query), 1024):
        sim, idx = (query[i:i + 1024] @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(len(sim), classes, device=device)
        votes.scatter_add_(1, bank_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == query_y[i:i + 1024]).sum())
    return 100.0 * correct / max(len(query), 1)
