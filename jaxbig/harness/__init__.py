"""lm-evaluation-harness on jaxbig runs (the optional extra `jaxbig[harness]`: lm-eval).

    model.py      JaxbigLM: lm-eval's LM interface (loglikelihood, loglikelihood_rolling,
                  generate_until) on a run; registered with lm-eval as 'jaxbig'
    scoring.py    the compiled forward / KV-cache decoding behind it, length-bucketed
    placement.py  the run's mesh and params' shardings
    tasks.py      embedded tasks (YAML + data) built from the held-out standard library
    evaluate.py   running tasks offline, results flattened to {task/metric: value}

`jaxbig harness` (jaxbig/commands/harness.py) and the training evaluator
(`evals.harness`, jaxbig/evals/harness.py) both go through evaluate.py.
"""

import os
import sys


def offline() -> None:
    """No network from here on: the Hugging Face libraries' offline switches, set in the
    environment (read when they are imported) and in their constants if already imported."""
    os.environ['HF_DATASETS_OFFLINE'] = os.environ['HF_HUB_OFFLINE'] = '1'
    for module, names in (('huggingface_hub.constants', ('HF_HUB_OFFLINE',)),
                          ('datasets.config', ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE'))):
        if module in sys.modules:
            for name in names:
                setattr(sys.modules[module], name, True)


offline()
