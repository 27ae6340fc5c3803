"""lm-evaluation-harness tasks as a training evaluator (needs `pip install 'jaxbig[harness]'`).

    c.evals.harness = dict(type='harness', tasks='stdlib_next_line,stdlib_files', limit=100,
                           every=500)

(`type` may be left out when the evaluator is named `harness`.) Keys: tasks (names, a
comma-separated string or a list; `jaxbig_stdlib` = the embedded tasks), limit (documents
per task, the first ones of each task's fixed order, the same at every evaluation; 0 = all),
num_fewshot (default each task's own), batch_size (16), max_gen_toks (256), include_path (a
list of task YAML directories), apply_chat_template (False: the tokenizer's chat template
around the prompts), every (steps; 0 = train.eval_every).

Logs `<name>/<task>/<metric>` and `<name>/<task>/num_examples` (jaxbig.harness.evaluate)
with the model's params where training holds them: the batch rows are split over the run's
mesh (jaxbig.harness.scoring). Every process scores every document (the same numbers);
multi-host runs of it are untested.
"""

from __future__ import annotations

from jaxbig.config import ConfigError


class Evaluator:
    def __init__(self, cfg, ctx, *, name: str = 'harness'):
        try:
            from jaxbig.harness import evaluate
        except ImportError as e:
            raise ConfigError(f"evals.{name}: lm-eval is not installed: pip install "
                              f"'jaxbig[harness]' ({e})") from None
        self.tasks = evaluate.parse_tasks(cfg.get('tasks', ''))
        self.limit = cfg.get('limit', 100)
        for key, value in (('limit', self.limit), ('batch_size', cfg.get('batch_size', 16)),
                           ('max_gen_toks', cfg.get('max_gen_toks', 256))):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f'evals.{name}.{key}={value!r}: must be an int >= 0')
        self.include_path = list(cfg.get('include_path', None) or [])
        try:
            evaluate.check_tasks(self.tasks, self.include_path)
        except ConfigError as e:
            raise ConfigError(f'evals.{name}: {e}') from None
        self.cfg, self.ctx, self.name = cfg, ctx, name
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from jaxbig.data.text import tokenizers

            self._tokenizer = tokenizers.from_config(self.ctx.config.data)
        return self._tokenizer

    def run(self, params) -> dict[str, float]:
        from jaxbig.harness import evaluate, model

        lm = model.JaxbigLM.from_parts(
            self.ctx.model, params, self.tokenizer, self.ctx.config, mesh=self.ctx.mesh,
            batch_size=self.cfg.get('batch_size', 16),
            max_gen_toks=self.cfg.get('max_gen_toks', 256))
        results = evaluate.evaluate(lm, self.tasks, num_fewshot=self.cfg.get('num_fewshot', None),
                                    limit=self.limit or None, include_path=self.include_path,
                                    apply_chat_template=bool(self.cfg.get('apply_chat_template',
                                                                          False)))
        return {f'{self.name}/{key}': value for key, value in results.metrics.items()}
