"""`jaxbig harness --workdir RUN --tasks T[,T...]`: EleutherAI lm-evaluation-harness tasks on
a run's checkpoint (needs `pip install 'jaxbig[harness]'`).

    jaxbig harness --workdir runs/lm --tasks jaxbig_stdlib
    jaxbig harness --workdir runs/llama --tasks my_task --include-path tasks/ --limit 100 \\
        --num-fewshot 5 --output results.json

Tasks: lm-eval's own (their data must be on local disk or already in the Hugging Face
cache: nothing is downloaded), the embedded `jaxbig_stdlib` tasks (jaxbig.harness.tasks)
and YAML tasks in `--include-path` directories. Prints one line per metric
(`<task>/<metric>`, jaxbig.harness.evaluate), appends them to `<workdir>/harness_results.jsonl`
with the step, and writes lm-eval's whole results dict to `--output`.
"""

from __future__ import annotations

import json
import os


def add_parser(add):
    p = add('harness', "lm-evaluation-harness tasks on a run's checkpoint (jaxbig[harness])")
    p.add_argument('--workdir', required=True, help='a training (or imported) workdir')
    p.add_argument('--tasks', required=True,
                   help='comma-separated task / group / tag names (jaxbig_stdlib: embedded)')
    p.add_argument('--num-fewshot', type=int, default=None, help="few-shot examples (default: "
                   "each task's own)")
    p.add_argument('--limit', type=float, default=None,
                   help='documents per task (an int), or a fraction of each task (< 1)')
    p.add_argument('--include-path', action='append', default=[], metavar='DIR',
                   help='a directory of task YAML files (repeatable)')
    p.add_argument('--output', help="write lm-eval's results (JSON) here")
    p.add_argument('--apply-chat-template', action='store_true',
                   help="render prompts with the run's tokenizer's chat template (instruct "
                   'models), few-shot examples as turns')
    p.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    p.add_argument('--batch-size', type=int, default=16, help='rows per compiled forward')
    p.add_argument('--max-length', type=int, default=None,
                   help='longest row in tokens (default: the model\'s positions, else the '
                   "run's data.seq_len)")
    p.add_argument('--max-gen-toks', type=int, default=256,
                   help='generation budget when a task sets none')
    p.set_defaults(run=run)


def run(args, extra):
    if extra:
        raise ValueError(f'jaxbig harness: unknown arguments {extra}')
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f'--limit {args.limit}: must be > 0')
    try:
        from jaxbig.harness import evaluate, model
    except ImportError as e:
        raise ValueError(f"jaxbig harness needs lm-eval: pip install 'jaxbig[harness]' ({e})")
    names = evaluate.parse_tasks(args.tasks)
    evaluate.check_tasks(names, args.include_path)  # bad tasks fail before the run is read
    lm = model.JaxbigLM(workdir=args.workdir, step=args.step, batch_size=args.batch_size,
                        max_length=args.max_length, max_gen_toks=args.max_gen_toks)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = evaluate.evaluate(lm, names, num_fewshot=args.num_fewshot, limit=limit,
                                include_path=args.include_path,
                                apply_chat_template=args.apply_chat_template)
    step = lm.step
    with open(os.path.join(args.workdir, 'harness_results.jsonl'), 'a') as f:
        f.write(json.dumps({'step': step, 'tasks': names, 'num_fewshot': args.num_fewshot,
                            'limit': limit, **results.metrics}) + '\n')
    if args.output:
        with open(args.output, 'w') as f:
            json.dump({'workdir': args.workdir, 'step': step, 'metrics': results.metrics,
                       **results.raw}, f, indent=1, default=str)
    print(f'{args.workdir}: step {step}')
    for key, value in sorted(results.metrics.items()):
        print(f'  {key:48s} {value:.6g}')
    return 0
