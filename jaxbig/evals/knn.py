"""k-nearest-neighbour accuracy on frozen features, cosine similarity.

Each test example takes the majority label of its k most cosine-similar training examples
(ties broken towards the smaller label). Config: type='knn', k (default 20), method,
train_split / test_split, max_train / max_test, batch_size (as in linear_probe).
Reports {name}/accuracy.
"""

from __future__ import annotations

import numpy as np

from jaxbig.evals.embedding import train_test_embedders


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 20) -> float:
    """train_x [n, D], test_x [m, D] float; labels int. Cosine k-NN majority vote accuracy."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = unit(test_x) @ unit(train_x).T  # [m, n]
    k = min(k, len(train_x))
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(test_x), int(train_y.max()) + 1), np.int64)
    np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[nearest]), 1)
    return float(np.mean(votes.argmax(1) == test_y))


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'knn'):
        self.train, self.test = train_test_embedders(cfg, ctx)
        self.k, self.prefix = cfg.get('k', 20), name

    def run(self, params) -> dict[str, float]:
        train_x, train_y = self.train(params)
        test_x, test_y = self.test(params)
        return {f'{self.prefix}/accuracy': knn_accuracy(train_x, train_y, test_x, test_y, k=self.k)}
