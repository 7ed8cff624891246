"""Embedding fidelity: how close the pruned encoder's embeddings stay to the dense ones."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from prunelab.errors import PrunelabError


def _check(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.dim() != 2:
        raise PrunelabError(
            f"embedding shapes differ or are not 2-D: {tuple(a.shape)} vs {tuple(b.shape)}"
        )


def cosine_to_reference(emb: Tensor, ref: Tensor) -> Tensor:
    """Row-wise cosine similarity (N,) between embeddings and reference embeddings.

    >>> cosine_to_reference(torch.tensor([[1., 0.], [0., 2.]]), torch.tensor([[1., 1.], [0., 1.]]))
    tensor([0.7071, 1.0000])
    """
    _check(emb, ref)
    return torch.nn.functional.cosine_similarity(emb.double(), ref.double(), dim=1).float()


def neighbours(emb: Tensor, k: int) -> Tensor:
    """(N, k) indices of each row's k nearest other rows by cosine similarity."""
    if not 0 < k < emb.shape[0]:
        raise PrunelabError(f"k must be in 1..{emb.shape[0] - 1}, got {k}")
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = e @ e.T  # (N, N)
    sim.fill_diagonal_(-float("inf"))
    return torch.topk(sim, k, dim=1).indices


def neighbour_overlap(emb: Tensor, ref: Tensor, k: int = 10) -> float:
    """Mean fraction of each sentence's top-k neighbours (reference) kept by ``emb``.

    >>> r = torch.tensor([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> neighbour_overlap(r, r, k=1), neighbour_overlap(r[[0, 2, 1, 3]], r, k=1)
    (1.0, 0.0)
    """
    return float(neighbour_kept(emb, ref, k).double().mean())


def neighbour_kept(emb: Tensor, ref: Tensor, k: int = 10) -> Tensor:
    """(N,) fraction of each row's top-k reference neighbours that ``emb`` keeps."""
    _check(emb, ref)
    a, b = neighbours(emb, k), neighbours(ref, k)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).sum(1)  # (N, k, 1)==(N, 1, k) -> (N,)
    return hits.double() / k


def fidelity(emb: Tensor, ref: Tensor, k: int = 10) -> dict[str, float]:
    """``cos_mean``, ``cos_min`` and ``knn@k`` of embeddings against the dense reference."""
    cos = cosine_to_reference(emb, ref)
    return {
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        f"knn@{k}": neighbour_overlap(emb, ref, k),
    }


def probe_accuracy(
    train_emb: Tensor, train_y: np.ndarray, test_emb: Tensor, test_y: np.ndarray, c: float = 1.0
) -> float:
    """Accuracy of a logistic-regression probe fitted on frozen embeddings (deterministic).

    >>> import torch
    >>> x = torch.tensor([[1., 0.], [.9, .1], [0., 1.], [.1, .9]]); y = np.array([1, 1, 0, 0])
    >>> probe_accuracy(x, y, x, y)
    1.0
    """

    if len(np.unique(train_y)) < 2:
        raise PrunelabError("the probe needs both classes in its training labels")
    if train_emb.shape[0] != len(train_y) or test_emb.shape[0] != len(test_y):
        raise PrunelabError("probe embeddings and labels differ in length")
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(train_emb.double().cpu().numpy(), train_y)
    return float((clf.predict(test_emb.double().cpu().numpy()) == test_y).mean())


def similarity_spearman(doc_emb: Tensor, human: np.ndarray) -> float:
    """Spearman ρ between embedding cosine and human similarity over all document pairs.

    ``human`` is square (N, N); its strict upper triangle holds the ratings.
    """
    n = doc_emb.shape[0]
    if human.shape != (n, n):
        raise PrunelabError(f"human matrix {human.shape} does not match {n} documents")
    e = doc_emb.double()
    e = e / e.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = (e @ e.T).cpu().numpy()  # (N, N)
    iu = np.triu_indices(n, 1)
    return float(spearmanr(sim[iu], human[iu]).statistic)
