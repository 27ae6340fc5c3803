"""Linear probe: logistic regression trained on frozen features; test accuracy.

Config: type='linear_probe', method ('features': the model method giving the
representation, [B, D]), train_split / test_split (default data.train_split /
data.val_split), max_train / max_test examples (0 = all), batch_size (0 = train.batch_size),
C (inverse L2 strength of sklearn's LogisticRegression). Features are standardised with the
training features' mean and std. Reports {name}/accuracy (fraction, 0-1).
"""

from __future__ import annotations

import numpy as np

from jaxbig.evals.embedding import train_test_embedders


def probe_accuracy(train_x, train_y, test_x, test_y, *, C: float = 1.0) -> float:
    """Fits multinomial logistic regression on [n, D] features; accuracy on the test set."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit((train_x - mean) / std, train_y)
    return float(np.mean(clf.predict((test_x - mean) / std) == test_y))


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'probe'):
        self.train, self.test = train_test_embedders(cfg, ctx)
        self.C, self.prefix = cfg.get('C', 1.0), name

    def run(self, params) -> dict[str, float]:
        train_x, train_y = self.train(params)
        test_x, test_y = self.test(params)
        acc = probe_accuracy(train_x, train_y, test_x, test_y, C=self.C)
        return {f'{self.prefix}/accuracy': acc}
