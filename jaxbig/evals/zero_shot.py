"""Zero-shot classification: class-name prompts -> text embeddings -> nearest class.

For each class c, every template ('a photo of a {}.') is filled with the class name,
tokenised with the data pipeline's tokenizer and embedded (`encode_text`); the class
embedding is the normalised mean over templates (CLIP's prompt ensembling). An image is
assigned the class whose embedding has the largest cosine with `encode_image(image)`.

Config: type='zero_shot', split (default data.val_split), class_names (list; empty = the
ClassLabel names of data.label_key), templates (list of strings with one '{}'),
max_examples (0 = all), batch_size (0 = train.batch_size), input_key (the batch column
the first tower embeds: 'image', or 'audio' for audio-text data; default 'image').
Reports {name}/accuracy and {name}/chance (= 1 / number of classes).
"""

from __future__ import annotations

import numpy as np

from jaxbig.evals.embedding import SplitEmbedder, jitted_method, plain_data_config, run_rows


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_accuracy(image_emb, class_emb, labels) -> float:
    """image_emb [n, E], class_emb [classes, E], labels int [n] -> top-1 accuracy."""
    return float(np.mean(np.argmax(unit(image_emb) @ unit(class_emb).T, axis=1) == labels))


def ensemble_prompts(text_emb, num_classes: int, num_templates: int) -> np.ndarray:
    """text_emb [classes * templates, E] (class-major: class c's templates are rows
    c*T .. c*T+T-1) -> unit class embeddings [classes, E]: the normalised mean of the
    normalised template embeddings (CLIP's prompt ensembling)."""
    text = unit(np.asarray(text_emb)).reshape(num_classes, num_templates, -1).mean(1)
    return unit(text)


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'zero_shot'):
        data_cfg = plain_data_config(ctx.config.data)
        self.batch_size = cfg.get('batch_size', 0) or ctx.config.train.batch_size
        self.images = SplitEmbedder(
            ctx, data_cfg, split=cfg.get('split', '') or data_cfg.val_split,
            batch_size=self.batch_size, method='encode_image',
            input_key=cfg.get('input_key', 'image'),
            max_examples=cfg.get('max_examples', 0),
        )
        pipeline = self.images.pipeline
        names = list(cfg.get('class_names', None) or [])
        if not names:
            label_key = data_cfg.get('label_key', 'label')
            names = list(pipeline.split.info.features[label_key].names)
        templates = list(cfg.get('templates', None) or ['{}'])
        prompts = [t.format(c) for c in names for t in templates]
        self.num_classes, self.num_templates = len(names), len(templates)
        self.prompt_tokens = pipeline.tokenizer.encode_batch(prompts, pipeline.max_len)
        self.encode_text = jitted_method(ctx, 'encode_text')
        self.ctx, self.prefix = ctx, name

    def class_embeddings(self, params) -> np.ndarray:
        text = run_rows(self.ctx, self.encode_text, params, self.prompt_tokens, self.batch_size)
        return ensemble_prompts(text, self.num_classes, self.num_templates)

    def run(self, params) -> dict[str, float]:
        image_emb, labels = self.images(params)
        acc = zero_shot_accuracy(image_emb, self.class_embeddings(params), labels)
        return {f'{self.prefix}/accuracy': acc, f'{self.prefix}/chance': 1.0 / self.num_classes}
