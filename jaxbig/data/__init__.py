"""Data: TFDS sources (array_record, read with `tfds.data_source`) -> deterministic,
index-based pipelines -> host-local numpy batches. No TensorFlow needed.

    data.prepare(config)                       # process 0, before build_pipeline
    pipe = data.build_pipeline(config, split=..., batch_size=B, seed=s,
                               process_index=p, process_count=P)
    pipe.get_batch(i)  # inputs/targets int32[B//P, T], mask float32[B//P, T]
"""

from jaxbig.data.lm import build_pipeline, prepare
from jaxbig.data.tokenizers import ByteTokenizer

__all__ = ['ByteTokenizer', 'build_pipeline', 'prepare']
