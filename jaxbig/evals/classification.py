"""Classification metrics on a held-out split: accuracy, macro recall, macro F1, and the
confusion matrix (saved as `<workdir>/confusion_<name>_<step>.{json,png}`).

Config: type='classification', split (default data.val_split), num_batches, batch_size
(0 = train.batch_size). Macro averages run over the classes present in the labels or in the
predictions, exactly as scikit-learn's `average='macro'`; a class never predicted has
precision 0 and a class absent from the labels recall 0 (so F1 0), as its zero_division=0.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from jaxbig.config import ConfigError


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """int64[K, K]; row = true class, column = predicted class."""
    return np.bincount(np.asarray(labels) * num_classes + np.asarray(preds),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: np.ndarray) -> dict[str, float]:
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support > 0) | (predicted > 0)  # sklearn: labels present in y_true or y_pred
    recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return {'accuracy': float(tp.sum() / max(cm.sum(), 1)),
            'macro_recall': float(recall[present].mean()),
            'macro_f1': float(f1[present].mean())}


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'val'):
        self.num_batches = cfg.get('num_batches', 8)
        if self.num_batches < 1:
            raise ConfigError(f'evals.{name}.num_batches={self.num_batches}: must be >= 1')
        data_cfg = ctx.config.data
        self.pipeline = ctx.build_pipeline(
            data_cfg, split=cfg.get('split', '') or data_cfg.val_split,
            batch_size=cfg.get('batch_size', 0) or ctx.config.train.batch_size)
        self.num_classes = ctx.config.model.num_classes
        self.class_names = list(getattr(self.pipeline, 'classes', range(self.num_classes)))
        self.ctx, self.name, self.evaluations = ctx, name, 0
        model, inputs_of = ctx.model, ctx.loss_module.model_inputs
        self._predict = jax.jit(lambda params, batch: model.apply(
            {'params': params}, *inputs_of(batch), train=False).argmax(-1),
            in_shardings=(ctx.params_shardings, None))

    def run(self, params) -> dict[str, float]:
        from jax.experimental import multihost_utils
        labels, preds = [], []
        for i in range(self.num_batches):
            batch = self.pipeline.get_batch(i)
            pred = self._predict(params, self.ctx.to_global(batch))
            preds.append(np.asarray(multihost_utils.process_allgather(pred, tiled=True)))
            labels.append(np.asarray(multihost_utils.process_allgather(
                self.ctx.to_global({'label': batch['label']})['label'], tiled=True)))
        cm = confusion_matrix(np.concatenate(labels), np.concatenate(preds), self.num_classes)
        self.evaluations += 1
        if self.ctx.process_index == 0:
            self._save(cm)
        return {f'{self.name}/{k}': v for k, v in scores(cm).items()}

    def _save(self, cm):
        stem = os.path.join(self.ctx.workdir, f'confusion_{self.name}')
        with open(stem + '.json', 'w') as f:
            json.dump({'classes': [str(c) for c in self.class_names],
                       'matrix': cm.tolist()}, f)
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        k = len(cm)
        fig, ax = plt.subplots(figsize=(1 + 0.5 * k, 1 + 0.5 * k))
        ax.imshow(cm, cmap='Blues')
        ax.set_xticks(range(k), [str(c) for c in self.class_names], rotation=90, fontsize=7)
        ax.set_yticks(range(k), [str(c) for c in self.class_names], fontsize=7)
        ax.set_xlabel('predicted')
        ax.set_ylabel('true')
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha='center', va='center', fontsize=6)
        fig.tight_layout()
        fig.savefig(stem + '.png', dpi=100)
        plt.close(fig)
