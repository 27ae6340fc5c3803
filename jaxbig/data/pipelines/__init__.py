"""One module per `data.pipeline` value (`data.pipeline='lm'` -> `lm.py`), each with
`prepare(config)` and `build_pipeline(config, *, split, batch_size, seed, ...)`."""
