"""`jaxbig plan`: the real train step of a config compiled ahead of time for a target mesh,
nothing materialised, and what it will cost.

    plan(config, target='cpu:8', mesh=None, mfu=0.4) -> dict (see `jaxbig/commands/plan.py`
        for the table it prints, `--json` for this dict)

The step is the one `jaxbig train` compiles (`run.setup` + `run.train_step_fn`, jitted with
the same shardings and donation), lowered with the train state and one global batch as
abstract shapes (`jax.ShapeDtypeStruct`) and compiled for the target's devices
(`planning.targets`). Reported per device: parameter, optimizer-state and batch bytes (from
the shardings, exact) beside their ideal shares, XLA's `memory_analysis()` (arguments,
outputs, donated aliases, temporaries) and the peak it implies, beside an analytic
activation estimate for GPTs (`planning.estimate`); model FLOPs per step (GPT: MaxText's
count, `models.gpt.flops_per_token`; other models: 3 x XLA's count of the forward pass)
and XLA's own `cost_analysis` of the compiled step; the collectives in the compiled
program (`planning.hlo`: payload and ring wire bytes) beside the least the parameters need
(`estimate.parameter_traffic`: FSDP's gathers and gradient reduce-scatter, data-parallel
gradient all-reduce) and their ratio; and the step time and tokens/s at the target's published bf16
peak and an assumed MFU. One update is compiled whatever train.steps_per_call (a host
dispatch knob: n updates per call scan this same update); strategy 'pmap' is costed as
its mesh equivalent (pure data parallel, the same arithmetic).
"""

from __future__ import annotations

import resource
import time

import flax.linen as nn
import jax
import numpy as np

from jaxbig import config as config_lib
from jaxbig import parallel
from jaxbig.planning import estimate, hlo, targets

AXES = parallel.AXES


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,fsdp=4,tensor=1' -> {'data': 2, 'fsdp': 4, 'tensor': 1}; axes not named are 1,
    one axis may be -1 (the rest of the devices)."""
    out = dict.fromkeys(AXES, 1)
    for part in filter(None, (p.strip() for p in text.split(','))):
        name, sep, value = part.partition('=')
        if not sep or name not in AXES:
            raise config_lib.ConfigError(
                f'--mesh {text!r}: expected axis=size pairs over {AXES}, e.g. data=2,fsdp=4')
        try:
            out[name] = int(value)
        except ValueError:
            raise config_lib.ConfigError(f'--mesh: {name}={value!r} is not an integer') from None
    return out


def _active_params(model, params) -> int:
    """Parameters a token's forward uses (a Mixture-of-Experts GPT: k of its experts)."""
    from jaxbig import lora
    from jaxbig.models import gpt_size

    return gpt_size.active_params(lora.unwrap(model), params)


def _knobs(config) -> dict:
    m, o, p = config.model, config.optimizer, config.parallel
    rules = {name: axes for name, axes in p.rules}
    return dict(remat=m.get('remat', 'none'), scan_layers=m.get('scan_layers', False),
                grad_accum_steps=o.grad_accum_steps, mu_dtype=o.get('mu_dtype', '') or 'params',
                dtype=m.get('dtype', 'float32'), param_dtype=m.get('param_dtype', 'float32'),
                vocab_rule=rules.get('vocab'), embed_rule=rules.get('embed'))


def _global_batch(example, batch_size: int):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((batch_size, *np.shape(x)[1:]), np.asarray(x).dtype),
        example)


def _model_flops(config, s, batch, example) -> tuple[float, str]:
    """Training FLOPs of one update (all devices) and how they were counted."""
    from jaxbig.models import gpt

    inputs = batch.get('inputs') if isinstance(batch, dict) else None
    if isinstance(s.model, gpt.Model) and inputs is not None and len(inputs.shape) == 2:
        tokens = inputs.shape[0] * inputs.shape[1]
        return gpt.flops_per_token(s.model, inputs.shape[1]) * tokens, 'MaxText count'
    model_inputs = s.loss_module.model_inputs(batch)
    forward = jax.jit(lambda p, *x: s.model.apply({'params': p}, *x, train=False))
    cost = forward.lower(s.abstract_state.params, *model_inputs).cost_analysis() or {}
    return 3.0 * float(cost.get('flops', 0.0)), '3 x XLA forward'


def plan(config, target: str = 'cpu:8', mesh: dict | None = None, *, mfu: float = 0.4,
         peak_tflops: float = 0.0) -> dict:
    """Compiles `config`'s train step for `target` (see module docstring); returns the
    figures as a dict. `mesh` ({axis: size}) replaces config.parallel's data/fsdp/tensor."""
    from jaxbig import data as data_lib
    from jaxbig import run as run_lib
    from jaxbig import train as train_lib

    if not 0 < mfu <= 1:
        raise config_lib.ConfigError(f'--mfu {mfu}: expected a fraction in (0, 1]')
    tgt = targets.parse(target)
    if mesh:
        for axis, size in mesh.items():
            config.parallel[axis] = size
    devices, compiled_for = targets.devices_for(tgt)  # before anything starts a backend
    moe = config.model.get('moe')
    if moe and moe.get('grouped') == 'auto':  # what training on the target would run
        with config.unlocked():
            moe.grouped = 'blocks' if tgt.platform == 'cpu' else 'ragged_dot'
    data_lib.prepare(config.data)
    example = run_lib.read_example_batch(config)
    try:
        s, compiled, lower_s, compile_s = _compile(config, example, devices)
    except jax.errors.JaxRuntimeError as e:
        if tgt.platform != 'tpu' or 'RESOURCE_EXHAUSTED' not in str(e):
            raise
        # libtpu refuses a program whose temporaries exceed HBM: compile on host CPU devices
        # standing in, which report the whole (over-capacity) peak
        why = str(e).splitlines()[0].split('RESOURCE_EXHAUSTED: ')[-1][:160]
        devices = targets.cpu_devices(len(devices))
        compiled_for = f'{len(devices)} host CPU devices standing in (libtpu: {why})'
        s, compiled, lower_s, compile_s = _compile(config, example, devices)
    mesh_shape = dict(s.mesh.shape)
    batch = _global_batch(example, config.train.batch_size)

    state, shardings = s.abstract_state, s.state_shardings
    batch_shardings = jax.tree.map(lambda _: s.batch_sharding, batch)
    exact = dict(params=estimate.sharded_bytes(state.params, shardings.params),
                 optimizer=estimate.sharded_bytes(state.opt_state, shardings.opt_state),
                 batch=estimate.sharded_bytes(batch, batch_shardings))
    ideal = estimate.ideal_share(state.params, state.opt_state, batch, mesh_shape)
    mem = compiled.memory_analysis()
    xla = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
               aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
               code=mem.generated_code_size_in_bytes,
               # the compiler's own peak (memory_analysis().peak_memory_in_bytes; libtpu
               # fills it, 0 = not given): its live buffers, where temp_size_in_bytes also
               # holds the fragmentation between them (libtpu's log says so)
               heap_peak=int(getattr(mem, 'peak_memory_in_bytes', 0) or 0))
    peak = xla['arguments'] + xla['outputs'] - xla['aliased'] + xla['temporaries']
    analytic_temps = _analytic_temps(config, s, batch, mesh_shape, exact['params'])

    flops, counted = _model_flops(config, s, batch, example)
    cost = compiled.cost_analysis() or {}
    comms = hlo.collectives(compiled.as_text(), len(devices))
    minimum = estimate.parameter_traffic(state.params, shardings.params, mesh_shape,
                                         config.model.get('dtype', 'float32'),
                                         config.optimizer.grad_accum_steps)
    wire = sum(v['wire_bytes'] for k, v in comms.items() if k in hlo.KINDS)
    minimum['ratio'] = wire / minimum['total'] if minimum['total'] else None
    tokens = train_lib.tokens_per_batch(batch)
    n = len(devices)
    chip = tgt.chip
    peak_flops = peak_tflops * 1e12 if peak_tflops else (chip.peak_flops if chip else 0.0)
    step_s = flops / n / (peak_flops * mfu) if peak_flops else None
    link = chip.link_bytes_per_s if chip else None
    comm_bytes = sum(v['bytes'] for k, v in comms.items() if k in hlo.KINDS)
    capacity = tgt.hbm_bytes
    terms = dict(params=exact['params'], optimizer=exact['optimizer'], batch=exact['batch'],
                 temporaries=xla['temporaries'])
    largest, knobs_hint = estimate.advice(terms, _knobs(config), capacity)
    notes = []
    micro = config.train.batch_size // config.optimizer.grad_accum_steps
    rows = int(np.prod([mesh_shape.get(a, 1) for a in parallel.BATCH_AXES]))
    if micro % rows:
        notes.append(f'each micro-batch has {micro} rows, which do not split over data x fsdp x '
                     f"expert = {rows} devices: XLA replicates or "
                     'pads them (more memory and compute than the shares above); '
                     'jaxbig train refuses this batch size')
    return dict(
        config=dict(model=config.model.get('name'), loss=config.loss.name,
                    batch_size=config.train.batch_size, tokens_per_step=tokens,
                    num_params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
                    active_params=_active_params(s.model, state.params),
                    flops_per_token=flops / tokens if tokens and counted == 'MaxText count'
                    else None),
        target=dict(name=tgt.name, platform=tgt.platform, num_devices=n,
                    device_kind=chip.kind if chip else 'host CPU', compiled_for=compiled_for,
                    hbm_bytes=capacity, peak_flops=peak_flops or None, link_bytes_per_s=link),
        mesh=mesh_shape,
        knobs=_knobs(config),
        memory=dict(exact=exact, ideal=ideal, xla=xla, peak=peak,
                    analytic_temporaries=analytic_temps),
        fits=None if capacity is None else bool(peak <= capacity),
        state_fits=None if capacity is None else bool(
            exact['params'] + exact['optimizer'] <= capacity),
        headroom=None if capacity is None else 1.0 - peak / capacity,
        largest_term=largest,
        advice=knobs_hint,
        notes=notes,
        flops=dict(model_per_step=flops, model_per_device=flops / n, counted=counted,
                   xla_per_device=float(cost.get('flops', 0.0)),
                   xla_bytes_accessed=float(cost.get('bytes accessed', 0.0))),
        collectives=comms,
        collectives_minimum=minimum,
        estimate=dict(mfu=mfu, step_s=step_s,
                      tokens_per_s=tokens / step_s if step_s and tokens else None,
                      collective_s=comm_bytes / link if link else None),
        host=dict(lower_s=lower_s, compile_s=compile_s,
                  peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
    )


def _compile(config, example, devices):
    """(setup, compiled train step, lower s, compile s) of `config` on `devices`."""
    from jaxbig import run as run_lib
    from jaxbig import step as step_lib

    s = run_lib.setup(config, '', example_batch=example, devices=devices, with_evals=False)
    batch = _global_batch(example, config.train.batch_size)
    fn = run_lib.train_step_fn(config, s)
    jitted = step_lib.jit_train_step(fn, s.state_shardings, s.batch_sharding)
    t0 = time.perf_counter()
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        lowered = jitted.lower(s.abstract_state, batch)
        lower_s = time.perf_counter() - t0
        compiled = lowered.compile()
    return s, compiled, lower_s, time.perf_counter() - t0 - lower_s


def _analytic_temps(config, s, batch, mesh_shape, param_bytes) -> float | None:
    from jaxbig.models import gpt

    x = batch.get('inputs') if isinstance(batch, dict) else None
    if not isinstance(s.model, gpt.Model) or x is None or len(x.shape) != 2:
        return None
    rows = x.shape[0] / np.prod([mesh_shape.get(a, 1) for a in parallel.BATCH_AXES])
    rows /= config.optimizer.grad_accum_steps
    return estimate.gpt_activation_bytes(s.model, rows, x.shape[1], mesh_shape['tensor'],
                                         grad_bytes=param_bytes,
                                         platform=s.mesh.devices.flat[0].platform,
                                         logits_chunk=config.loss.get('logits_chunk', 0))
