"""`jaxbig plan --config FILE.py[:ARG] [--config.x=y] --mesh data=D,fsdp=F,tensor=T
[--target v5p-256 | v5e-256 | v6e-64 | h100x8 | h200x8 | cpu:N] [--mfu 0.4] [--json]`:
compile a config's train step ahead of time for a target and print what it costs
(jaxbig.planning). Nothing is trained, no workdir is written, no array is materialised.
"""

from __future__ import annotations

import json

from jaxbig.planning import targets

EPILOG = f"""\
targets: {targets.EXAMPLES}
  v5p-N / v4-N count TensorCores (N/2 chips), v5e-N / v6e-N count chips. TPU targets use
  the real TPU compiler when libtpu is installed (pip install -e '.[tpu-plan]'; no TPU
  needed); otherwise, and for GPU targets, the step is compiled on N host CPU devices as a
  stand-in (same partitioning; XLA:CPU's temporaries; CPU all-reduces where a TPU would
  reduce-scatter).
mesh: axes not named are 1; one may be -1 (the rest).
exit status: 0 fits (or no capacity known), 1 does not fit, 2 bad input.
"""


def add_parser(add):
    p = add('plan', 'compile a config for a target mesh ahead of time: memory, FLOPs, '
            'collectives, step time', epilog=EPILOG)
    p.add_argument('--config', required=True, metavar='FILE.py[:ARG]',
                   help='the experiment file, as for jaxbig train (overrides: --config.a.b=v)')
    p.add_argument('--mesh', help="e.g. data=2,fsdp=4,tensor=1 (default: the config's "
                   'parallel section)')
    p.add_argument('--target', default='cpu:8', help='the machine to plan for (see below)')
    p.add_argument('--mfu', type=float, default=0.4,
                   help='assumed model FLOPs utilisation for the step-time estimate')
    p.add_argument('--peak-tflops', type=float,
                   help="per-device bf16 peak in TFLOP/s (default: the target's published figure)")
    p.add_argument('--json', action='store_true', help='print the figures as JSON')
    p.set_defaults(run=run)


def run(args, extra):
    from jaxbig import experiment, planning

    mesh = planning.parse_mesh(args.mesh) if args.mesh else None
    targets.parse(args.target)  # a bad target fails before the config is built
    config = experiment.load_config(args.config, extra)
    result = planning.plan(config, args.target, mesh, mfu=args.mfu,
                           peak_tflops=args.peak_tflops or 0.0)
    result['config']['spec'] = args.config
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 1 if result['fits'] is False else 0


def _b(n) -> str:
    """Bytes in decimal units (1 GB = 1e9, as accelerator memory is published)."""
    if n is None:
        return '-'
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if abs(n) < 1000 or unit == 'TB':
            return f'{n:.1f} {unit}' if unit != 'B' else f'{int(n)} B'
        n /= 1000


def _si(x, unit='') -> str:
    for scale, prefix in ((1e18, 'E'), (1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'),
                          (1e3, 'k')):
        if abs(x) >= scale:
            return f'{x / scale:.3g} {prefix}{unit}'.rstrip()
    return f'{x:.3g} {unit}'.rstrip()


def table(r: dict) -> str:
    t, m, mem, k = r['target'], r['mesh'], r['memory'], r['knobs']
    mesh = ' x '.join(f'{a}={n}' for a, n in m.items())
    cap = f", {_b(t['hbm_bytes'])} each" if t['hbm_bytes'] else ''
    lines = [
        f"plan  {r['config'].get('spec', '')} on {t['name']} ({t['num_devices']} x "
        f"{t['device_kind']}{cap}), mesh {mesh}",
        f"      compiled for {t['compiled_for']}: lowered in {r['host']['lower_s']:.1f} s, "
        f"compiled in {r['host']['compile_s']:.1f} s; peak host memory "
        f"{_b(r['host']['peak_rss_bytes'])}",
        f"model {r['config']['model']}, {_si(r['config']['num_params'])} parameters"
        + (f" ({_si(r['config']['active_params'])} active per token)"
           if r['config'].get('active_params', r['config']['num_params'])
           != r['config']['num_params'] else '')
        + (f", {_si(r['config']['flops_per_token'], 'FLOP')} per token"
           if r['config'].get('flops_per_token') else '') + '; '
        f"batch {r['config']['batch_size']}"
        + (f" ({_si(r['config']['tokens_per_step'])} tokens) per step" if r['config']['tokens_per_step'] else ''),
        f"knobs remat {k['remat']}, scan_layers {k['scan_layers']}, grad_accum_steps "
        f"{k['grad_accum_steps']}, mu_dtype {k['mu_dtype']}, dtype {k['dtype']} / params "
        f"{k['param_dtype']}, vocab -> {k['vocab_rule']}, embed -> {k['embed_rule']}",
        '',
        f"{'memory per device':34s}{'compiled':>12s}{'analytic':>12s}",
    ]
    ideal = mem['ideal']
    for name in ('params', 'optimizer', 'batch'):
        lines.append(f"  {name:32s}{_b(mem['exact'][name]):>12s}{_b(ideal[name]):>12s}")
    xla = mem['xla']
    lines.append(f"  {'temporaries (XLA)':32s}{_b(xla['temporaries']):>12s}"
                 f"{_b(mem['analytic_temporaries']):>12s}")
    lines.append(f"  {'arguments / outputs / donated':32s}"
                 f"{_b(xla['arguments'])} / {_b(xla['outputs'])} / {_b(xla['aliased'])}")
    lines.append(f"  {'peak (args + outputs - donated + temps)':40s}{_b(mem['peak']):>6s}")
    if xla.get('heap_peak'):
        lines.append(f"  {'peak as the compiler reports it':40s}{_b(xla['heap_peak']):>6s}"
                     '  (live buffers; the temporaries above also hold the gaps between them)')
    if r['fits'] is None:
        lines.append('  capacity unknown for this target')
    else:
        verdict = (f"fits, headroom {100 * r['headroom']:.0f} %" if r['fits'] else
                   f"DOES NOT FIT ({_b(mem['peak'])} > {_b(t['hbm_bytes'])}); largest term: "
                   f"{r['largest_term']}")
        lines.append(f"  capacity {_b(t['hbm_bytes'])}: {verdict}")
        if r.get('state_fits') is False:
            state = mem['exact']['params'] + mem['exact']['optimizer']
            lines.append(f"    parameters + optimizer state alone need {_b(state)} per device")
        if not r['fits']:
            lines += [f'    try: {hint}' for hint in r['advice']]
    lines += [f'  note: {note}' for note in r.get('notes', [])]
    f = r['flops']
    lines += ['', f"compute  model FLOPs per step {_si(f['model_per_step'], 'FLOP')} "
              f"({f['counted']}), {_si(f['model_per_device'], 'FLOP')} per device; XLA "
              f"cost_analysis {_si(f['xla_per_device'], 'FLOP')} per device (while-loop "
              'bodies counted once)']
    lines.append('collectives per step, per device (loop trip counts applied; payload, and the '
                 'bytes a ring algorithm sends):')
    wire = 0.0
    for kind, v in r['collectives'].items():
        if isinstance(v, dict) and v['count']:
            wire += v['wire_bytes']
            lines.append(f"  {kind:26s}{v['count']:>7d} ops {_b(v['bytes']):>12s} "
                         f"payload {_b(v['wire_bytes']):>12s} sent")
    if r['collectives'].get('all-gather-as-all-reduce', {}).get('count'):
        lines.append('  (all-gather-as-all-reduce: gathers over a group that spans every device, '
                     'which libtpu turns into all-reduces of a zero buffer holding the local '
                     'shard, twice the traffic; a mesh whose fsdp axis leaves a factor out, '
                     'e.g. data=2, keeps them all-gathers)')
    m = r.get('collectives_minimum')
    if m and m['total']:
        lines.append(f"  least the parameters need: gathers {_b(m['gather'])} + gradient "
                     f"reduce-scatter {_b(m['reduce_scatter'])} + data all-reduce "
                     f"{_b(m['data_all_reduce'])} = {_b(m['total'])} sent; the program sends "
                     f"{_b(wire)} = {m['ratio']:.2f}x that")
    e = r['estimate']
    if e['step_s']:
        line = (f"estimate at {_si(t['peak_flops'], 'FLOP/s')} peak and MFU "
                f"{100 * e['mfu']:.0f} %: step {e['step_s']:.3g} s")
        if e['tokens_per_s']:
            line += (f", {_si(e['tokens_per_s'])} tokens/s "
                     f"({_si(e['tokens_per_s'] / t['num_devices'])} per device)")
        if e['collective_s'] is not None:
            line += (f"; collectives alone {e['collective_s']:.3g} s at "
                     f"{_b(t['link_bytes_per_s'])}/s per device (no overlap)")
        lines += ['', line]
    else:
        lines += ['', 'estimate: no published peak for this target (pass --peak-tflops)']
    return '\n'.join(lines)
