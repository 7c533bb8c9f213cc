"""Multi-process data parallelism with JAX's distributed runtime on CPU.

Every run is a subprocess (``tests/_multihost_driver.py``): either one
process with 8 CPU devices, or two processes with 4 each, joined by
``jax.distributed.initialize`` over gloo collectives. Both see 8 devices and
one ``pmap`` over all of them, so the two shapes train the same model on the
same global batches.

The two shapes agree to a few float32 ulps, not bit for bit: the gradient
``pmean`` sums the 8 device values in a different order in an in-process
all-reduce than in gloo's cross-process one. Runs of the same shape agree
bit for bit. A run that read the wrong batches would differ by far more than
the tolerance (checked against the change of one training step).

The runs, in two waves of concurrent subprocesses:

* ``one``: 1 process, uninterrupted (4 steps, a checkpoint after each);
* ``two``: 2 processes, uninterrupted;
* ``stopped``: 2 processes, SIGTERM to process 1 only after 2 steps;
* ``resumed``: ``stopped`` rerun with 2 processes;
* ``two_to_one``: a copy of ``stopped`` resumed with 1 process;
* ``one_to_two``: ``one`` cut back to its step-2 checkpoint (what a stop at
  step 2 leaves) resumed with 2 processes.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from atmc_jax import data
from atmc_jax.training import parallel

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DRIVER = os.path.join(_ROOT, 'tests', '_multihost_driver.py')
_WAVE_TIMEOUT_S = 300
# A few ulps of the params after 4 steps (observed: <= 3e-8).
_ATOL = 1e-6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join([
      f'--xla_force_host_platform_device_count={devices}',
      '--xla_cpu_collective_timeout_seconds=600',
      '--xla_cpu_collective_call_terminate_timeout_seconds=600',
  ])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
      [_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  return env


def _launch(name, workdir, logdir, num_processes, sigterm_after=None):
  """Starts one run's processes; returns ``(name, [(Popen, out, log)])``."""
  port = _free_port()
  procs = []
  for i in range(num_processes):
    out = os.path.join(logdir, f'{name}.{i}.json')
    log = os.path.join(logdir, f'{name}.{i}.log')
    spec = dict(process_id=i, num_processes=num_processes, port=port,
                workdir=workdir, out=out,
                sigterm_after=sigterm_after if i == 1 else None)
    with open(log, 'w') as f:
      proc = subprocess.Popen(
          [sys.executable, _DRIVER, json.dumps(spec)], cwd=_ROOT,
          env=_env(8 // num_processes), stdout=f, stderr=subprocess.STDOUT)
    procs.append((proc, out, log))
  return name, procs


def _wait(runs):
  """Waits for every process; kills all and fails on a hang or an error."""
  deadline = time.monotonic() + _WAVE_TIMEOUT_S
  results, failed = {}, []
  for name, procs in runs:
    for proc, _, log in procs:
      try:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        failed.append(f'{name}: timed out after {_WAVE_TIMEOUT_S}s')
      if proc.returncode:
        with open(log) as f:
          tail = [l for l in f.read().splitlines() if '[Gloo]' not in l]
        failed.append(f'{name}: exit code {proc.returncode}\n'
                      + '\n'.join(tail[-15:]))
  if failed:
    for _, procs in runs:
      for proc, _, _ in procs:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    pytest.fail('\n'.join(failed))
  for name, procs in runs:
    outs = []
    for _, out, _ in procs:
      with open(out) as f:
        outs.append(json.load(f))
    results[name] = outs
  return results


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """``{name: (workdir, [per-process driver output])}`` of the runs above."""
  root = tmp_path_factory.mktemp('multihost')
  logdir = str(root / 'logs')
  os.makedirs(logdir)
  wd = {name: str(root / name) for name in (
      'one', 'two', 'stopped', 'resumed', 'two_to_one', 'one_to_two')}
  start = time.monotonic()
  first = _wait([_launch('one', wd['one'], logdir, 1),
                 _launch('two', wd['two'], logdir, 2),
                 _launch('stopped', wd['stopped'], logdir, 2,
                         sigterm_after=2)])
  # Snapshots of the stopped runs, before anything resumes them.
  stopped_listing = sorted(os.listdir(os.path.join(wd['stopped'],
                                                   'checkpoints')))
  shutil.copytree(wd['stopped'], wd['resumed'])
  shutil.copytree(wd['stopped'], wd['two_to_one'])
  os.makedirs(os.path.join(wd['one_to_two'], 'checkpoints'))
  for step in ('1', '2'):
    shutil.copytree(os.path.join(wd['one'], 'checkpoints', step),
                    os.path.join(wd['one_to_two'], 'checkpoints', step))
  second = _wait([_launch('resumed', wd['resumed'], logdir, 2),
                  _launch('two_to_one', wd['two_to_one'], logdir, 1),
                  _launch('one_to_two', wd['one_to_two'], logdir, 2)])
  print(f'multihost runs: {time.monotonic() - start:.1f}s')
  outputs = {**first, **second}
  return {'workdirs': wd, 'outputs': outputs,
          'stopped_listing': stopped_listing}


def _state(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  state = ocp.StandardCheckpointer().restore(path)
  return jax.tree.map(np.asarray, state)


def _assert_trees(a, b, *, exact):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=0, atol=_ATOL)


def _max_change(a, b):
  return max(float(np.max(np.abs(x - y), initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------ sharding (no runtime)


@pytest.mark.parametrize('process_count', [1, 2, 4, 8])
def test_device_shards_do_not_depend_on_the_process_count(process_count):
  """Global device ``d`` gets the same examples whatever the pod shape.

  Process ``p`` of ``P`` shards its slice of the global batch over its
  ``8 / P`` local devices; in ``pmap``'s global device order (process-major)
  the shards are those of one process with 8 devices, for any batch index.
  """
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 6, 6, 1), np.uint8)
  labels = rng.integers(0, 10, 40).astype(np.int32)
  kw = dict(batch_size=16, seed=3, epoch=2, augment='crop_flip')
  single = data.iterate_batches(images, labels, **kw)
  for index in (1, 0):  # Random access, as a resumed run reads it.
    want = parallel.shard_batch(single.batch(index), 8)
    parts = [parallel.shard_batch(
        data.iterate_batches(images, labels, process_index=p,
                             process_count=process_count, **kw).batch(index),
        8 // process_count) for p in range(process_count)]
    for k in want:
      got = np.concatenate([part[k] for part in parts])
      assert got.shape == want[k].shape
      np.testing.assert_array_equal(got, want[k])


def test_initialize_distributed_rejects_a_bad_process_count(monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:1')
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    parallel.initialize_distributed()


def test_pmap_devices_with_one_process_are_as_given():
  devices = jax.local_devices()[:2]
  assert parallel._pmap_devices(devices) == devices  # pylint: disable=protected-access
  assert parallel._pmap_devices(None) is None  # pylint: disable=protected-access


def test_any_process_is_the_flag_on_one_process():
  assert parallel.any_process(True) is True
  assert parallel.any_process(False) is False


# ------------------------------------------- with the distributed runtime


def test_two_processes_share_eight_devices(runs):
  for name in ('two', 'stopped', 'resumed', 'one_to_two'):
    outs = runs['outputs'][name]
    assert [o['process_index'] for o in outs] == [0, 1]
    assert all(o['process_count'] == 2 and o['device_count'] == 8
               for o in outs)
  assert runs['outputs']['one'][0]['device_count'] == 8


def test_one_step_matches_one_process(runs):
  wd = runs['workdirs']
  one, two = _state(wd['one'], 1), _state(wd['two'], 1)
  assert int(two['step']) == 1
  _assert_trees(two['params'], one['params'], exact=False)
  _assert_trees(two['opt_state'], one['opt_state'], exact=False)
  # One step moves the params by far more than the tolerance.
  assert _max_change(_state(wd['one'], 2)['params'],
                     one['params']) > 1e3 * _ATOL
  # Same shape, same reduction order: bit for bit.
  _assert_trees(_state(wd['stopped'], 1), two, exact=True)


def test_short_run_matches_one_process(runs):
  wd, outputs = runs['workdirs'], runs['outputs']
  one, two = _state(wd['one'], 4), _state(wd['two'], 4)
  _assert_trees(two['params'], one['params'], exact=False)
  _assert_trees(two['opt_state'], one['opt_state'], exact=False)
  assert _max_change(_state(wd['one'], 3)['params'],
                     one['params']) > 1e3 * _ATOL
  for out in outputs['two']:
    assert out['summary']['status'] == 'finished'
    assert out['summary']['steps'] == 4
    # Evaluation counts every example once, across both processes.
    assert out['summary']['test_count'] == 32
    assert out['summary']['nnz'] == outputs['one'][0]['summary']['nnz']


def test_only_the_primary_process_writes_reports(runs):
  wd = runs['workdirs']['two']
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['split'] for r in records] == ['val', 'test']
  assert records[0]['val_count'] == 32
  with open(os.path.join(wd, 'summary.json')) as f:
    assert json.load(f)['steps'] == 4
  with open(os.path.join(wd, 'config.json')) as f:
    assert json.load(f)['model'] == 'lenet'


def test_sigterm_to_one_process_stops_both_at_one_step(runs):
  outs = runs['outputs']['stopped']
  assert [o['summary'] for o in outs] == [
      {'status': 'stopped', 'steps': 2, 'total_steps': 4}] * 2
  # One checkpoint per step up to the stop, none after it.
  assert runs['stopped_listing'] == ['1', '2']
  assert not os.path.exists(os.path.join(runs['workdirs']['stopped'],
                                         'summary.json'))


def test_resumed_two_process_run_is_bit_identical(runs):
  wd = runs['workdirs']
  assert all(o['summary']['status'] == 'finished'
             for o in runs['outputs']['resumed'])
  for step in (3, 4):
    _assert_trees(_state(wd['resumed'], step), _state(wd['two'], step),
                  exact=True)
  with open(os.path.join(wd['resumed'], 'metrics.jsonl')) as f:
    assert [json.loads(l)['split'] for l in f] == ['val', 'test']


@pytest.mark.parametrize('name', ['two_to_one', 'one_to_two'])
def test_resume_with_another_process_count(runs, name):
  """The resumed run continues the batch sequence of an uninterrupted one."""
  wd = runs['workdirs']
  assert all(o['summary']['status'] == 'finished'
             for o in runs['outputs'][name])
  for step in (3, 4):
    got = _state(wd[name], step)
    _assert_trees(got['params'], _state(wd['one'], step)['params'],
                  exact=False)
    _assert_trees(got['params'], _state(wd['two'], step)['params'],
                  exact=False)
