"""Data: TFDS sources (array_record, read with `tfds.data_source`) -> deterministic,
index-based pipelines -> host-local numpy batches. No TensorFlow needed.

    data.prepare(config)                       # process 0, before build_pipeline
    pipe = data.build_pipeline(config, split=..., batch_size=B, seed=s,
                               process_index=p, process_count=P)
    pipe.get_batch(i)  # dict of numpy arrays with B//P rows; a pure function of (seed, i)

`config.pipeline` names the module that turns the dataset into batches ('lm' ->
`jaxbig.data.pipelines.lm`: inputs/targets int32[B//P, T], mask float32[B//P, T]). A new kind
of data is a new module there with `prepare(config)` and `build_pipeline(config, ...)`.

The package by kind:
    builders/    the embedded datasets (TFDS builders: pystdlib, digits, shapes,
                 audio_captions) and the conditional task built from pystdlib
    pipelines/   one module per `data.pipeline` value: dataset -> batches
    text/        tokenizers and their training, stream encodings, documents and the
                 token cache, captions
    (here)       what every pipeline shares: TFDS sources, image sources, index shuffles,
                 prefetch, folds, label subsets, augmentation, one-pass evaluation
"""


from jaxbig.config import resolve
from jaxbig.data.text.tokenizers import ByteTokenizer

__all__ = ['ByteTokenizer', 'build_pipeline', 'num_classes', 'pipeline_module', 'prepare']


def pipeline_module(config):
    """The module `jaxbig.data.pipelines.<config.pipeline>` (default 'lm')."""
    return resolve(f'{__name__}.pipelines', config.get('pipeline', 'lm'), 'data.pipeline',
                   'build_pipeline')


def prepare(config) -> None:
    pipeline_module(config).prepare(config)


def build_pipeline(config, **kwargs):
    return pipeline_module(config).build_pipeline(config, **kwargs)


def num_classes(config) -> int:
    """The number of classes of a classification data section (model.num_classes='auto'):
    its pipeline module's `num_classes(config)` (a `features` section asks its source)."""
    from jaxbig.config import ConfigError

    source = config.get('source') or config
    module = pipeline_module(source)
    if not hasattr(module, 'num_classes'):
        raise ConfigError(f"model.num_classes='auto': data.pipeline="
                          f"{source.get('pipeline', 'lm')!r} does not know its classes; set "
                          'model.num_classes')
    return int(module.num_classes(source))
