"""jaxbig's default XLA flags: added when missing, never over a user's own, switchable off,
and really reaching the compiler (a fresh process per case: XLA reads flags at start-up);
the allocator restart, also through the entry point and the old path jaxbig.xla_defaults."""
import os
import subprocess
import sys

import pytest

import jaxbig
from jaxbig.runtime import xla_defaults

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


GLIBC, THP = ('glibc', '2.36'), 'madvise'


def test_malloc_tunables_added_only_where_they_apply():
    assert xla_defaults.malloc_tunables({}, GLIBC, THP) == 'glibc.malloc.hugetlb=1'
    assert xla_defaults.malloc_tunables({}, GLIBC, 'always') == 'glibc.malloc.hugetlb=1'
    kept = {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}
    assert (xla_defaults.malloc_tunables(kept, GLIBC, THP)
            == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
    assert xla_defaults.malloc_tunables({}, GLIBC, 'never') is None
    assert xla_defaults.malloc_tunables({}, GLIBC, '') is None  # no THP file
    assert xla_defaults.malloc_tunables({}, ('glibc', '2.31'), THP) is None  # no hugetlb tunable
    assert xla_defaults.malloc_tunables({}, ('', ''), THP) is None  # musl, macOS
    assert xla_defaults.malloc_tunables({'JAXBIG_XLA_DEFAULTS': '0'}, GLIBC, THP) is None
    users = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}
    assert xla_defaults.malloc_tunables(users, GLIBC, THP) is None


def test_restart_execs_the_same_command_once_and_recovers_from_failure(monkeypatch):
    monkeypatch.setattr(xla_defaults, 'malloc_tunables', lambda env: 'glibc.malloc.hugetlb=1')
    monkeypatch.setattr(sys, 'orig_argv', ['python', '-m', 'jaxbig', 'train'])
    calls, env = [], {}
    xla_defaults.restart_with_malloc_defaults(env, lambda path, argv: calls.append((path, argv)))
    assert calls == [(sys.executable, ['python', '-m', 'jaxbig', 'train'])]
    assert env == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}

    def fails(path, argv):
        raise OSError('exec not allowed')

    env = {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}
    xla_defaults.restart_with_malloc_defaults(env, fails)  # warns, goes on unchanged
    assert env == {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}
    env = {}
    xla_defaults.restart_with_malloc_defaults(env, fails)
    assert env == {}

    monkeypatch.setattr(xla_defaults, 'malloc_tunables', lambda env: None)
    xla_defaults.restart_with_malloc_defaults({}, lambda path, argv: calls.append(argv))
    assert len(calls) == 1  # nothing to change: no restart


def test_entry_point_restarts_with_the_tunable_in_a_real_process():
    env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    expected = xla_defaults.malloc_tunables(env)
    code = ('import os, sys; from jaxbig.runtime import xla_defaults; print("start", flush=True); '
            'xla_defaults.restart_with_malloc_defaults(); '
            'print(os.environ.get("GLIBC_TUNABLES"))')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    if expected is None:  # this machine has no glibc >= 2.35 or no transparent huge pages
        assert out == ['start', 'None']
    else:  # started twice (once restarted), then ran on with the tunable set
        assert out == ['start', 'start', expected]


def test_old_path_is_the_same_module():
    """README used to tell users to call jaxbig.xla_defaults.restart_with_malloc_defaults()."""
    import jaxbig.xla_defaults as old
    from jaxbig import xla_defaults as old_too

    assert old is xla_defaults and old_too is xla_defaults
    assert old.restart_with_malloc_defaults is xla_defaults.restart_with_malloc_defaults


def test_old_path_and_entry_point_restart_in_a_real_process(tmp_path):
    """A user's script on the old path, and `python -m jaxbig` (jaxbig/__main__.py), start
    once more with the tunable, with the same command line (sys.argv kept)."""
    env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    expected = xla_defaults.malloc_tunables(env)
    script = tmp_path / 'mine.py'
    script.write_text('import os, sys\nimport jaxbig.xla_defaults\nprint("start", sys.argv[1:])\n'
                      'jaxbig.xla_defaults.restart_with_malloc_defaults()\n'
                      'print(os.environ.get("GLIBC_TUNABLES"))\n')
    out = subprocess.run([sys.executable, str(script), 'a', 'b c'], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    start = "start ['a', 'b c']"
    assert out == ([start, 'None'] if expected is None else [start, start, expected])
    # the console script's entry (jaxbig/__main__.py): restarts first, then runs the command
    code = ('import os, sys; print(os.environ.get("GLIBC_TUNABLES"), flush=True); '
            'sys.argv = ["jaxbig", "--version"]; from jaxbig.__main__ import entry; entry()')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    version = f'jaxbig {jaxbig.__version__}'
    assert out == (['None', version] if expected is None else ['None', expected, version])
