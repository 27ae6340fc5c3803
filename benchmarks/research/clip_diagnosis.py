"""Where a two-tower run's zero-shot errors come from: colour or shape, ensemble or model.

    diagnose(workdir) -> dict of fractions (0-1) on the run's whole test split:
        ensemble_accuracy   the zero_shot evaluator's rule, recomputed: a class is the
                            normalised mean of its templates' unit text embeddings
        max_template_accuracy  a class scores its best template instead (= retrieval among
                            the 24 x 18 prompts, read as the prompt's class)
        *_colour / *_shape  the same predictions scored on colour only / shape only
        within_class_cos    mean cosine of one class's prompts (across templates)
        between_class_cos   mean cosine of two classes' prompts under the same template

The run is read back with `jaxbig.run.load_run`; prompts and templates are the run's own
(`evals.zero_shot.templates`, class names of the data's label feature).
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def scores(image_emb, prompt_emb):
    """image_emb [n, E], prompt_emb [C, T, E] (unit) -> (ensemble [n, C], max-template [n, C])
    cosines."""
    ensemble = unit(image_emb) @ unit(unit(prompt_emb).mean(1)).T
    best = np.einsum('ne,cte->nct', unit(image_emb), unit(prompt_emb)).max(2)
    return ensemble, best


def prompt_cosines(prompt_emb) -> tuple[float, float]:
    """prompt_emb [C, T, E] -> (mean cosine within a class across templates (off-diagonal),
    mean cosine between classes under the same template)."""
    u = unit(prompt_emb)
    classes, templates = u.shape[:2]
    within = np.einsum('cte,cse->cts', u, u)
    within = (within.sum() - classes * templates) / (classes * templates * (templates - 1))
    between = np.einsum('cte,dte->cd', u, u) / templates
    between = (between.sum() - np.trace(between)) / (classes * (classes - 1))
    return float(within), float(between)


def diagnose(workdir: str, num_shapes: int = 4) -> dict[str, float]:
    """See the module docstring; labels are colour * num_shapes + shape (data.builders.shapes)."""
    from jaxbig import data as data_lib
    from jaxbig import run as run_lib

    run = run_lib.load_run(workdir)
    cfg = run.config
    pipe = data_lib.build_pipeline(cfg.data, split=cfg.data.val_split, batch_size=1, seed=0)
    n = len(pipe.split)
    batch = data_lib.build_pipeline(cfg.data, split=cfg.data.val_split, batch_size=n,
                                    seed=0).get_batch(0)
    names = list(pipe.split.info.features[cfg.data.label_key].names)
    templates = list(cfg.evals.zero_shot.templates)
    tokens = pipe.tokenizer.encode_batch([t.format(c) for c in names for t in templates],
                                         pipe.max_len)

    def encode(method, x):
        return np.asarray(run.model.apply({'params': run.params}, x, method=method))

    image = encode('encode_image', batch['image'])
    prompts = encode('encode_text', tokens).reshape(len(names), len(templates), -1)
    labels = batch['label']
    out = {}
    for rule, s in zip(('ensemble', 'max_template'), scores(image, prompts), strict=True):
        pred = s.argmax(1)
        out[f'{rule}_accuracy'] = float(np.mean(pred == labels))
        out[f'{rule}_colour'] = float(np.mean(pred // num_shapes == labels // num_shapes))
        out[f'{rule}_shape'] = float(np.mean(pred % num_shapes == labels % num_shapes))
    out['within_class_cos'], out['between_class_cos'] = prompt_cosines(prompts)
    return out
