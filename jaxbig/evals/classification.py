"""Classification metrics on a held-out split, each example scored once: accuracy, macro and
weighted precision / recall / F1, and the confusion matrix (saved as
`<workdir>/confusion_<name>.{json,png}`).

Config: type='classification', split (default data.val_split), num_examples (0 = the whole
split; else the first num_examples of the split's fixed order, the same in every run and at
every batch size; `jaxbig.data.one_pass`), batch_size (0 = train.batch_size). The split is
read in one pass whose last batch is padded with copies of a real row; those rows are
dropped before the confusion matrix. Logs `<name>/num_examples`, the examples scored (so
accuracy * num_examples is the integer count of correct predictions).

Averages are scikit-learn's `precision_recall_fscore_support(..., zero_division=0)`: over
the classes present in the labels or in the predictions; a class never predicted has
precision 0 and a class absent from the labels recall 0 (so F1 0). `macro_*` weigh those
classes equally, `weighted_*` by their number of true examples (support).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """int64[K, K]; row = true class, column = predicted class."""
    return np.bincount(np.asarray(labels) * num_classes + np.asarray(preds),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: np.ndarray) -> dict[str, float]:
    """accuracy, macro_{precision,recall,f1}, weighted_{precision,recall,f1} of a confusion
    matrix (see the module docstring)."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support > 0) | (predicted > 0)  # sklearn: labels present in y_true or y_pred
    recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    total = support.sum()
    out = {'accuracy': float(tp.sum() / max(cm.sum(), 1))}
    for key, value in (('precision', precision), ('recall', recall), ('f1', f1)):
        out[f'macro_{key}'] = float(value[present].mean()) if present.any() else 0.0
        out[f'weighted_{key}'] = float((value * support).sum() / total) if total else 0.0
    return out


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'val'):
        data_cfg = ctx.config.data
        self.pipeline = ctx.build_pipeline(
            data_cfg, split=cfg.get('split', '') or data_cfg.val_split,
            batch_size=cfg.get('batch_size', 0) or ctx.config.train.batch_size,
            one_pass=True, num_examples=cfg.get('num_examples', 0))
        self.num_classes = ctx.config.model.num_classes
        self.class_names = list(getattr(self.pipeline, 'classes', range(self.num_classes)))
        self.ctx, self.name, self.evaluations = ctx, name, 0
        model, inputs_of = ctx.model, ctx.loss_module.model_inputs
        self._predict = jax.jit(lambda params, batch: model.apply(
            {'params': params}, *inputs_of(batch), train=False).argmax(-1),
            in_shardings=(ctx.params_shardings, None))

    def run(self, params) -> dict[str, float]:
        from jax.experimental import multihost_utils
        labels, preds, real = [], [], []
        for i in range(self.pipeline.num_batches):
            batch = self.pipeline.get_batch(i)
            pred = self._predict(params, self.ctx.to_global(batch))
            preds.append(np.asarray(multihost_utils.process_allgather(pred, tiled=True)))
            rows = self.ctx.to_global({k: batch[k] for k in ('label', 'example_mask')})
            labels.append(np.asarray(multihost_utils.process_allgather(rows['label'],
                                                                       tiled=True)))
            real.append(np.asarray(multihost_utils.process_allgather(rows['example_mask'],
                                                                     tiled=True)) > 0)
        real = np.concatenate(real)
        cm = confusion_matrix(np.concatenate(labels)[real], np.concatenate(preds)[real],
                              self.num_classes)
        self.evaluations += 1
        if self.ctx.process_index == 0:
            self._save(cm)
        out = {f'{self.name}/{k}': v for k, v in scores(cm).items()}
        out[f'{self.name}/num_examples'] = float(cm.sum())
        return out

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
