"""jaxbig's default XLA flags: added when missing, never over a user's own, switchable off,
and really reaching the compiler (a fresh process per case: XLA reads flags at start-up)."""
import os
import subprocess
import sys

import pytest

from jaxbig import xla_defaults

YNN = '--xla_cpu_experimental_ynn_fusion_type='


def test_adds_missing_defaults_and_keeps_the_users_flags():
    env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
    assert xla_defaults.apply(env) == [YNN]
    assert env['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=8', YNN]
    assert xla_defaults.apply(env) == []  # idempotent

    env = {}
    xla_defaults.apply(env)
    assert env['XLA_FLAGS'] == YNN

    users = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=individual_dot'}
    assert xla_defaults.apply(users) == []
    assert users['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=individual_dot'


def test_off_switch():
    env = {'JAXBIG_XLA_DEFAULTS': '0', 'XLA_FLAGS': '--foo=1'}
    assert xla_defaults.apply(env) == []
    assert env['XLA_FLAGS'] == '--foo=1'


PROBE = ('import jaxbig, jax, jax.numpy as jnp; x = jnp.ones((64, 64)); '
         "print('__ynn_fusion' in jax.jit(lambda a: a @ a).lower(x).compile().as_text())")


@pytest.mark.parametrize('switch, ynn_in_hlo', [('1', False), ('0', True)])
def test_defaults_reach_the_compiled_program(switch, ynn_in_hlo):
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env.update(JAXBIG_XLA_DEFAULTS=switch, JAX_PLATFORMS='cpu')
    out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(ynn_in_hlo)


def test_warns_when_the_backend_started_first():
    code = 'import jax.numpy as jnp; jnp.ones(2).block_until_ready(); import jaxbig'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env.update(JAX_PLATFORMS='cpu')
    err = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         check=True).stderr
    assert 'do not apply to this process' in err
