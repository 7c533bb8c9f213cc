"""Smoke tests of the benchmark suite: tiny configurations, well-formed JSON.

No timing is asserted; speed is measured only by ``python -m benchmarks.run``.
"""

import json
import math
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax

from benchmarks import _timing
from benchmarks import autoattack
from benchmarks import flops
from benchmarks import profile_step
from benchmarks import run
from benchmarks import steps
from benchmarks import torch_lenet

RECORD_KEYS = ('median_s', 'min_s', 'max_s', 'n')


def _check_record(test, record):
  for key in RECORD_KEYS:
    test.assertIn(key, record)
  test.assertGreaterEqual(record['n'], 1)
  test.assertLessEqual(record['min_s'], record['median_s'])
  test.assertLessEqual(record['median_s'], record['max_s'])
  test.assertGreater(record['min_s'], 0.0)


class TimingTest(absltest.TestCase):

  def test_summarize(self):
    rec = _timing.summarize([3.0, 1.0, 2.0])
    self.assertEqual(rec, {'median_s': 2.0, 'min_s': 1.0, 'max_s': 3.0,
                           'n': 3})
    with self.assertRaisesRegex(ValueError, 'at least 1'):
      _timing.summarize([])

  def test_time_calls_counts_only_timed_calls(self):
    calls = []
    rec, times = _timing.time_calls(lambda: calls.append(1), n=4, warmup=2,
                                    sync=None)
    self.assertLen(calls, 6)
    self.assertLen(times, 4)
    self.assertEqual(rec['n'], 4)
    with self.assertRaisesRegex(ValueError, 'n must be >= 1'):
      _timing.time_calls(lambda: None, n=0)

  def test_add_rate(self):
    rec = _timing.add_rate(_timing.summarize([0.5, 1.0, 2.0]), 4e9, 8.0)
    self.assertAlmostEqual(rec['achieved_gflops'], 4.0)
    self.assertAlmostEqual(rec['fraction_of_peak'], 0.5)
    self.assertAlmostEqual(rec['achieved_gflops_best'], 8.0)

  def test_matmul_peak(self):
    rec = _timing.matmul_peak_gflops(64, n=2)
    _check_record(self, rec)
    self.assertEqual(rec['flops'], 2 * 64 ** 3)
    self.assertGreater(rec['gflops'], 0)


class FlopsTest(absltest.TestCase):

  def test_weight_counts_match_the_spec(self):
    # Spec §4.1: 430,500 LeNet weights, 21,265,088 ResNet-34 (CIFAR-10).
    self.assertEqual(sum(l.weights for l in flops.lenet_layers()), 430_500)
    self.assertEqual(sum(l.weights for l in flops.resnet34_layers()),
                     21_265_088)
    self.assertEqual(sum(l.weights for l in flops.resnet34_layers(100)),
                     21_311_168)

  def test_lenet_counts(self):
    self.assertEqual(flops.forward_flops(flops.lenet_layers()), 4_586_000)
    pgd = flops.step_flops('lenet', 'adversarial', 256)
    # 7 attack passes (2F) + 2 training passes (3F - F_conv1) per example.
    f, f0 = 4_586_000, 2 * 24 * 24 * 25 * 20
    self.assertEqual(pgd, 256 * (7 * 2 * f + 2 * (3 * f - f0)))
    self.assertTrue(22e9 < pgd < 26e9)
    self.assertGreater(
        flops.step_flops('lenet', 'adversarial', 256, factorized=True), pgd)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'kind must be one of'):
      flops.step_flops('lenet', 'nope', 1)
    with self.assertRaisesRegex(ValueError, 'batch must be >= 1'):
      flops.step_flops('lenet', 'plain', 0)
    with self.assertRaisesRegex(ValueError, "model must be one of"):
      flops.model_layers('vgg')

  def test_xla_flops_matches_a_matmul(self):
    a = jax.numpy.ones((32, 16))
    b = jax.numpy.ones((16, 8))
    counted = flops.xla_flops_of(jax.jit(jax.numpy.dot), a, b)
    if counted is not None:
      self.assertEqual(counted, 2 * 32 * 16 * 8)


class SuiteTest(absltest.TestCase):

  def test_run_main_writes_well_formed_json(self):
    tmp = tempfile.mkdtemp()
    out = os.path.join(tmp, 'results.json')
    md = os.path.join(tmp, 'table.md')
    run.main(['--quick', '--only', r'^lenet/plain_step$', '--out', out,
              '--markdown', md, '--lenet-batch', '8', '--peak-size', '64',
              '--no-torch', '--no-parallel', '--no-external'])
    with open(out, encoding='utf-8') as f:
      doc = json.load(f)
    self.assertGreater(doc['matmul_peak_gflops'], 0)
    for key in ('date', 'jax_version', 'device', 'cpu_count', 'targets'):
      self.assertIn(key, doc['meta'])
    records = {k: v for k, v in doc.items() if k not in
               ('matmul_peak_gflops', 'meta')}
    self.assertEqual(set(records), {'lenet/plain_step'})
    rec = records['lenet/plain_step']
    _check_record(self, rec)
    self.assertEqual(rec['traces'], 1)  # One compilation for every step.
    self.assertEqual(rec['flops'],
                     flops.step_flops('lenet', 'plain', 8))
    self.assertTrue(math.isfinite(rec['fraction_of_peak']))
    with open(md, encoding='utf-8') as f:
      table = f.read()
    self.assertIn('| `lenet/plain_step` |', table)

  def test_target_ratios_and_markdown(self):
    rec = lambda t: {'median_s': t, 'min_s': t, 'max_s': t, 'n': 1}
    doc = {'lenet/pgd7_step': dict(rec(0.3), fraction_of_peak=0.7),
           'lenet/pgd7_step/torch': rec(0.6),
           'lenet/atmc8_step_amortised': rec(0.85)}
    ratios = run.target_ratios(doc)
    self.assertAlmostEqual(ratios['lenet_pgd7_vs_torch']['ratio_median'], 0.5)
    self.assertTrue(ratios['lenet_pgd7_vs_torch']['met'])
    self.assertFalse(ratios['lenet_atmc8_vs_reference']['met'])
    self.assertTrue(ratios['lenet_pgd7_fraction_of_peak']['met'])
    doc['meta'] = {'targets': ratios, 'notes': ['a note']}
    table = run.render_markdown(doc)
    self.assertIn('lenet_pgd7_vs_torch', table)
    self.assertIn('* a note', table)

  def test_make_config_validates(self):
    config = steps.make_config('lenet', 'atmc8', batch_size=16)
    self.assertEqual(config.compression, 'atmc')
    self.assertEqual(config.loss, 'mixed')
    self.assertFalse(config.train_attack.random_start)
    with self.assertRaisesRegex(ValueError, 'model must be one of'):
      steps.make_config('vgg', 'da', batch_size=16)

  def test_parallel_records(self):
    out = steps.time_parallel(batch_size=16, n=1, name='plain_step')
    self.assertEqual(set(out), {'parallel/single_step',
                                'parallel/pmap8_step'})
    for record in out.values():
      _check_record(self, record)
      self.assertEqual(record['traces'], 1)


class TorchTest(absltest.TestCase):

  def test_interleaved_records_and_ratio(self):
    if not torch_lenet.available():
      self.skipTest('torch is not installed')
    suite = run.Suite(None, r'interleaved')
    suite.results['meta'] = {}
    run.run_interleaved(suite, quick=True, batch=8)
    for name in ('lenet/pgd7_step/interleaved_jax',
                 'lenet/pgd7_step/interleaved_torch'):
      _check_record(self, suite.results[name])
    ratio = suite.results['meta']['targets'][
        'lenet_pgd7_vs_torch_interleaved']
    self.assertLessEqual(ratio['ratio_min'], ratio['ratio_median'])
    self.assertLessEqual(ratio['ratio_median'], ratio['ratio_max'])

  def test_torch_steps_run(self):
    if not torch_lenet.available():
      self.skipTest('torch is not installed')
    plain, pgd = torch_lenet.make_steps(batch=4, num_steps=2)
    self.assertTrue(math.isfinite(plain()))
    self.assertTrue(math.isfinite(pgd()))

  def test_pgd_stays_in_the_ball(self):
    if not torch_lenet.available():
      self.skipTest('torch is not installed')
    import torch  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    model = torch_lenet._make_lenet()  # pylint: disable=protected-access
    x = torch.rand(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    x_adv = torch_lenet.pgd(model, x, y, epsilon=0.1, num_steps=3)
    self.assertLessEqual(float((x_adv - x).abs().max()), 0.1 + 1e-6)
    self.assertGreaterEqual(float(x_adv.min()), 0.0)
    self.assertLessEqual(float(x_adv.max()), 1.0)
    self.assertGreater(float((x_adv - x).abs().max()), 0.0)


class ProfileStepTest(absltest.TestCase):

  def test_op_table_reads_a_trace(self):
    x = jax.numpy.ones((256, 256))
    f = jax.jit(lambda a: jax.numpy.tanh(a @ a))
    jax.block_until_ready(f(x))
    trace_dir = tempfile.mkdtemp()
    jax.profiler.start_trace(trace_dir)
    for _ in range(2):
      jax.block_until_ready(f(x))
    jax.profiler.stop_trace()
    rows = profile_step._op_table(trace_dir, tempfile.mkdtemp(), steps=2,
                                  top=5)
    self.assertNotEmpty(rows)
    self.assertLessEqual(len(rows), 5)
    ms = [r[0] for r in rows]
    self.assertEqual(ms, sorted(ms, reverse=True))
    self.assertGreater(ms[0], 0.0)
    # No HLO dump given: ops are listed without descriptions.
    self.assertTrue(all(r[3] == '' for r in rows))

  def test_bad_arguments(self):
    for argv in (['--attack-steps', '0'], ['--reps', '0'], ['--top', '0']):
      with self.assertRaises(SystemExit):
        profile_step._parse(argv)
    self.assertEqual(profile_step._parse(['--attack-steps', '3']).attack_steps,
                     [3])


class AutoAttackBenchmarkTest(absltest.TestCase):

  def test_records_of_every_component(self):
    out = autoattack.run(batch=4, num_steps=2, num_targets=2, num_queries=3)
    self.assertIn('benchmarks.autoattack', ' '.join(out.pop('_notes')))
    self.assertEqual(set(out), {f'lenet/autoattack/{c}'
                                for c in autoattack.COMPONENTS})
    for rec in out.values():
      _check_record(self, rec)
      self.assertEqual(rec['batch'], 4)
      self.assertAlmostEqual(rec['examples_per_s'], 4 / rec['median_s'])
      self.assertIn('reduced', rec['note'])
    self.assertIn('benchmarks.autoattack', run.EXTERNAL_MODULES)

  def test_without_torchattacks_the_torch_records_are_skipped(self):
    with mock.patch.object(autoattack, 'torchattacks', None):
      out = autoattack.run(batch=4, components=(), with_torch=True)
    self.assertEqual(set(out), {'_notes'})
    self.assertIn('torchattacks is not installed', ' '.join(out['_notes']))

  def test_side_by_side_with_torchattacks(self):
    if not autoattack.torch_available():
      self.skipTest('torch or torchattacks is not installed')
    # One component only: the whole ensemble compiles all four attacks.
    out = autoattack.run(batch=4, num_steps=2, num_targets=2, num_queries=3,
                         components=('apgd_ce',), with_torch=True)
    name = 'lenet/autoattack/apgd_ce'
    self.assertEqual(set(out) - {'_notes'}, {name, name + '/torch'})
    ours, theirs = out[name], out[name + '/torch']
    _check_record(self, ours)
    _check_record(self, theirs)
    self.assertEqual(theirs['batch'], 4)
    self.assertEqual(ours['torch_median_s'], theirs['median_s'])
    self.assertAlmostEqual(ours['ratio_to_torch'],
                           ours['median_s'] / theirs['median_s'])
    # 2 of 100 iterations: a linear estimate, labelled as such.
    self.assertEqual(ours['scale_to_standard'], 50)
    self.assertAlmostEqual(ours['standard_estimate_s'], 50 * ours['median_s'])
    self.assertIn('same predictions', ' '.join(out['_notes']))
    table = autoattack.render_markdown(out)
    self.assertIn(f'| `{name}` | 4 |', table)
    self.assertIn('not measured', table)


if __name__ == '__main__':
  absltest.main()
