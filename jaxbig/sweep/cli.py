"""`jaxbig sweep`: the parser and the command.

`add_parser(subparsers)` adds the `sweep` subcommand (jaxbig/cli.py calls it); `run` plans
the sweep, (re)launches what is left through the chosen launcher and writes the report.
"""

from __future__ import annotations

import os
import sys

from jaxbig import config as config_lib
from jaxbig.sweep import launchers, runner
from jaxbig.sweep.plan import canonical, plan_runs
from jaxbig.sweep.state import STATE_FILE, State

DESCRIPTION = ('Ablation sweeps: one sweep file -> many `jaxbig train` runs -> one results '
               'table + plots.')


def add_parser(subparsers):
    """Adds `jaxbig sweep` to the CLI's subparsers."""
    p = subparsers.add_parser('sweep', help='run an ablation sweep; write its results table',
                              description=DESCRIPTION, allow_abbrev=False)
    p.add_argument('--config', help='experiments/file.py[:arg] (default: the one in sweep.json)')
    p.add_argument('--sweep', help='experiments/sweeps/file.py (default: the one in sweep.json)')
    p.add_argument('--workdir', required=True, help='one subdirectory per run; sweep.json; results')
    p.add_argument('--parallel', type=int, default=1, help='runs at a time (local launcher)')
    p.add_argument('--launcher', choices=['local', 'slurm', 'tpu'], default='local',
                   help='local: subprocesses here; slurm: one sbatch job per run (then '
                        'return); tpu: one run at a time through launch/tpu_pod.sh')
    p.add_argument('--dry-run', action='store_true', help='print each pending run\'s command')
    p.add_argument('--report', action='store_true', help='only write the report, run nothing')
    p.add_argument('--retry-failed', action='store_true', help='also rerun failed runs')
    p.add_argument('--debug', action='store_true', help='show full tracebacks (runs too)')
    p.set_defaults(run=run)
    return p


def run(args, extra):
    """`jaxbig sweep`: plan, (re)launch, report. Exits 1 if a run failed."""
    from jaxbig.sweep import report  # matplotlib, jax: only when a report is written

    if args.launcher in launchers.SCRIPTS and not args.report:
        launchers.launch_script(args.launcher)  # missing scripts: an error before any work
    state = State(args.workdir)
    if args.report:
        if not state.data['config']:
            raise config_lib.ConfigError(f'--workdir {args.workdir}: no {STATE_FILE} there')
        for path in report.write_report(args.workdir, state.data):
            print(path)
        return
    base = config_lib.split_overrides(extra)
    if not base and not args.config:  # a relaunch by workdir alone: the stored overrides
        base = [tuple(o) for o in state.data['overrides']]
    spec = args.config or state.data['config']
    sweep_path = args.sweep or state.data['sweep']
    if not spec or not sweep_path:
        raise config_lib.ConfigError('jaxbig sweep needs --config and --sweep (or a workdir '
                                     f'holding a {STATE_FILE})')
    if state.data['config'] and (spec, [list(o) for o in base]) != (
            state.data['config'], state.data['overrides']):
        raise config_lib.ConfigError(
            f'--workdir {args.workdir} holds a sweep of --config {state.data["config"]} with '
            f'overrides {state.data["overrides"]}; use the same ones or another workdir')
    names = {canonical(r['overrides']): n for n, r in state.runs.items()}
    runs = plan_runs(spec, sweep_path, base, names)
    if args.dry_run:
        launchers.dry_run(state, runs, args.workdir, args.launcher, args.debug)
        return
    os.makedirs(args.workdir, exist_ok=True)
    with runner.lock(args.workdir):
        todo = runner.merge_state(state, runs, spec, sweep_path, base, args.workdir,
                                  args.retry_failed)
        if args.launcher == 'slurm':
            launchers.submit(state, todo, args.workdir, args.debug)
        else:
            parallel = args.parallel
            if args.launcher == 'tpu' and parallel > 1:
                print('sweep: --launcher tpu runs one run at a time', file=sys.stderr)
                parallel = 1
            local = runner.Runner(state, args.workdir, args.launcher, parallel, args.debug)
            local.progress(f'{len(todo)} to run')
            local.run(todo)
    for path in report.write_report(args.workdir, state.data):
        print(path)
    failed = [n for n, r in state.runs.items() if r['status'] == 'failed']
    if failed:
        print(f'sweep: {len(failed)} run(s) failed: {", ".join(failed)}', file=sys.stderr)
        raise SystemExit(1)
