"""Image<->text retrieval recall@k over a held-out split.

N images and their N captions are embedded (`encode_image`, `encode_text`). Image i's
correct texts are all captions identical to its own (token for token) - procedurally
generated captions repeat, and COCO-style multi-caption data has several per image; text j's
correct images are the images with that caption. R@k = fraction of queries with a correct
item among the k most cosine-similar.

Config: type='retrieval', split (default data.val_split), max_examples (default 1000),
ks (default (1, 5, 10)), batch_size (0 = train.batch_size), input_key (the batch column
the first tower embeds: 'image', or 'audio' for audio-text data; default 'image').
Reports {name}/i2t_r{k}, {name}/t2i_r{k}, and {name}/i2t_chance_r1 (the expected R@1 of a
random ranking: mean fraction of correct texts per image).
"""

from __future__ import annotations

import numpy as np

from jaxbig.evals.embedding import SplitEmbedder, jitted_method, plain_data_config, run_rows


def recall_at_k(sim: np.ndarray, correct: np.ndarray, ks) -> dict[int, float]:
    """sim [queries, items]; correct bool [queries, items] -> {k: recall@k}."""
    order = np.argsort(-sim, axis=1, kind='stable')
    hits = np.take_along_axis(correct, order, axis=1)  # [queries, items] in rank order
    first = np.where(hits.any(1), hits.argmax(1), sim.shape[1])  # rank of the first hit
    return {k: float(np.mean(first < k)) for k in ks}


def same_caption(texts: np.ndarray) -> np.ndarray:
    """texts int [n, L] token rows -> bool [n, n]: rows i and j are the same caption."""
    _, inverse = np.unique(texts, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[:, None] == inverse[None, :]


def retrieval_metrics(image_emb, text_emb, correct, ks) -> dict[str, float]:
    """image_emb [n, E], text_emb [m, E] unit-norm; correct bool [n, m] (image i, text j).
    -> {'i2t_r{k}', 't2i_r{k}' for k in ks, 'i2t_chance_r1'} (fractions, 0-1)."""
    sim = np.asarray(image_emb) @ np.asarray(text_emb).T
    out = {'i2t_chance_r1': float(np.mean(correct))}
    for direction, s, c in (('i2t', sim, correct), ('t2i', sim.T, correct.T)):
        for k, r in recall_at_k(s, c, ks).items():
            out[f'{direction}_r{k}'] = r
    return out


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'retrieval'):
        data_cfg = plain_data_config(ctx.config.data)
        self.batch_size = cfg.get('batch_size', 0) or ctx.config.train.batch_size
        self.images = SplitEmbedder(
            ctx, data_cfg, split=cfg.get('split', '') or data_cfg.val_split,
            batch_size=self.batch_size, method='encode_image',
            input_key=cfg.get('input_key', 'image'),
            max_examples=cfg.get('max_examples', 1000),
        )
        self.texts = self.images.column('text')
        self.correct = same_caption(self.texts)
        self.encode_text = jitted_method(ctx, 'encode_text')
        self.ks = tuple(cfg.get('ks', (1, 5, 10)))
        self.ctx, self.prefix = ctx, name

    def run(self, params) -> dict[str, float]:
        image_emb, _ = self.images(params)
        text_emb = run_rows(self.ctx, self.encode_text, params, self.texts, self.batch_size)
        metrics = retrieval_metrics(image_emb, text_emb, self.correct, self.ks)
        return {f'{self.prefix}/{k}': v for k, v in metrics.items()}
