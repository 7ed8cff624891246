"""What the encoder still knows: a sentiment probe and human similarity correlation."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from prunelab.errors import PrunelabError


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
    clf.fit(train_emb.double().numpy(), train_y)
    return float((clf.predict(test_emb.double().numpy()) == test_y).mean())


def similarity_spearman(doc_emb: Tensor, human: np.ndarray) -> float:
    """Spearman ρ between embedding cosine and human similarity over all document pairs.

    ``human`` is square (N, N); its strict upper triangle holds the ratings.
    """
    n = doc_emb.shape[0]
    if human.shape != (n, n):
        raise PrunelabError(f"human matrix {human.shape} does not match {n} documents")
    e = doc_emb.double()
    e = e / e.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = (e @ e.T).numpy()  # (N, N)
    iu = np.triu_indices(n, 1)
    return float(spearmanr(sim[iu], human[iu]).statistic)
