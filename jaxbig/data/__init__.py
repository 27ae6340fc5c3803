"""Data: TFDS sources (array_record, read with `tfds.data_source`) -> deterministic,
index-based pipelines -> host-local numpy batches. No TensorFlow needed.

    data.prepare(config)                       # process 0, before build_pipeline
    pipe = data.build_pipeline(config, split=..., batch_size=B, seed=s,
                               process_index=p, process_count=P)
    pipe.get_batch(i)  # dict of numpy arrays with B//P rows; a pure function of (seed, i)

`config.pipeline` names the module that turns the dataset into batches ('lm' ->
`jaxbig.data.lm`: inputs/targets int32[B//P, T], mask float32[B//P, T]). A new kind of data
is a new module with `prepare(config)` and `build_pipeline(config, ...)`.
"""


from jaxbig.config import resolve
from jaxbig.data.tokenizers import ByteTokenizer

__all__ = ['ByteTokenizer', 'build_pipeline', 'num_classes', 'pipeline_module', 'prepare']


def pipeline_module(config):
    """The module `jaxbig.data.<config.pipeline>` (default 'lm')."""
    return resolve(__name__, config.get('pipeline', 'lm'), 'data.pipeline', 'build_pipeline')


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
