"""The `jaxbig <command>` commands, one thin module each: parse / print, call the library.

    train      jaxbig/cli.py         loads the config, calls jaxbig.train.train (the loop)
    eval       commands/eval.py      re-run a run's evaluators on its best or latest checkpoint
    generate   commands/generate.py  sample text from a run (jaxbig.generate)
    sweep      jaxbig/sweep/cli.py   ablation sweeps (the sweep package)
    quantize   commands/quantize.py  int8 size and validation-loss report (jaxbig.quantize)
    prune      commands/prune.py     magnitude pruning: sparsity per layer, loss before / after,
                                     a pruned workdir (jaxbig.prune, jaxbig.pruning)
    lora merge commands/lora.py      write a LoRA run's merged plain weights (jaxbig.lora)
    import     commands/interop.py   a Hugging Face model directory -> a workdir (jaxbig.interop)
    export     commands/interop.py   a run -> a directory transformers loads
    tokenizer  commands/tokenizer.py train a BPE / SentencePiece tokenizer on a config's data
    plan       commands/plan.py      compile a config for a target mesh ahead of time: memory,
                                     FLOPs, collectives, step time (jaxbig.planning)

jaxbig/cli.py is the one parser (`jaxbig --help` lists every command) and imports these
modules only when their command runs. `quantize`, `prune` and `lora` keep their own parsers
(cli.py hands them their arguments verbatim). Library errors propagate to the caller, whose
policy (jaxbig.cli.guarded) prints one line `jaxbig: error: ...` and exits 2.
"""
