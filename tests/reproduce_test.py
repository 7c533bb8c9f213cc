"""Tests for the reproduction pipeline (experiments/reproduce.py, _report.py)."""

import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections

from atmc_jax import optim
from atmc_jax import training
from experiments import _report
from experiments import evaluate_attacks
from experiments import reproduce
from experiments.configs import default


_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments', 'configs')


def grid_doc(name):
  return reproduce.load_config_module(
      os.path.join(_CONFIG_DIR, f'{name}.py')).__doc__


def _tempdir(test_case):
  path = tempfile.mkdtemp()
  test_case.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _row(method, p, cr, ta, ata, nnz=10, bits=320, wall=1.0):
  return dict(dataset='synthetic', method=method, p=p, compression_ratio=cr,
              ta=ta, ata=ata, ata_paper=ata + 0.05, nnz=nnz, bits=bits,
              selected_step=7, last_ta=ta - 0.01, last_ata=ata - 0.02,
              test_examples=500, wall_time_s=wall)


_ROWS = [
    _row('da', None, 1.0, 0.9, 0.6),
    _row('natural', None, 1.0, 0.95, 0.01),
    _row('al0', 0.01, 0.01, 0.8, 0.5),
    _row('al0', 0.1, 0.1, 0.85, 0.55),
    _row('atmc8', 0.01, 0.004, 0.79, 0.49),
    _row('atmc8', 0.1, 0.03, 0.84, 0.54),
]


class PlanTest(parameterized.TestCase):

  def test_dependencies_come_first_and_dense_once(self):
    stages = reproduce.plan_stages('atmc8,ap', '0.1,0.01')
    names = [s.name for s in stages]
    self.assertEqual(names, [
        'da', 'al0_p0.01', 'atmc32_p0.01', 'atmc8_p0.01', 'al0_p0.1',
        'atmc32_p0.1', 'atmc8_p0.1', 'ap_p0.01', 'ap_p0.1'])
    for i, s in enumerate(stages):
      if s.parent is not None:
        self.assertIn(s.parent, stages[:i])

  def test_every_method(self):
    stages = reproduce.plan_stages(list(reproduce.METHODS), [0.01])
    self.assertLen(stages, len(reproduce.METHODS))
    by_method = {s.method: s for s in stages}
    self.assertEqual(by_method['nap'].parent, reproduce.Stage('natural'))
    self.assertEqual(by_method['alr'].parent, reproduce.Stage('da'))
    self.assertEqual(by_method['atmc32'].parent, reproduce.Stage('al0', 0.01))

  def test_method_sparsities_override_the_levels(self):
    stages = reproduce.plan_stages('da,al0,alr', '0.003,0.01',
                                   {'alr': '0.05'})
    self.assertEqual([s.name for s in stages],
                     ['da', 'al0_p0.003', 'al0_p0.01', 'alr_p0.05'])
    # Only overridden sparse methods: no global levels needed.
    self.assertEqual([s.name for s in reproduce.plan_stages(
        'alr', '', {'alr': [0.02]})], ['da', 'alr_p0.02'])
    with self.assertRaisesRegex(ValueError, 'accepted'):
      reproduce.plan_stages('alr', '0.01', {'alr': '2'})

  def test_dense_only_needs_no_sparsity(self):
    self.assertEqual([s.name for s in reproduce.plan_stages('natural,da', '')],
                     ['natural', 'da'])

  @parameterized.parameters('bogus', '', 'da,foo')
  def test_bad_method_raises(self, methods):
    with self.assertRaisesRegex(ValueError, 'accepted'):
      reproduce.plan_stages(methods, '0.1')

  @parameterized.parameters('0', '1.5', '-0.1', 'x', '')
  def test_bad_sparsity_raises(self, sparsities):
    with self.assertRaisesRegex(ValueError, r'accepted|sparsit'):
      reproduce.plan_stages('al0', sparsities)

  def test_stage_config(self):
    grid = ml_collections.ConfigDict()
    grid.base = ml_collections.ConfigDict(
        dict(stage='natural', sparsity=0.5, bits=None, init_from='',
             num_epochs=9, learning_rate=0.1, nested=dict(a=1, b=2)))
    grid.stage_overrides = dict(atmc8=dict(num_epochs=2, nested=dict(b=3)))
    grid.atmc_bits = 4
    cfg = reproduce.stage_config(grid, reproduce.Stage('atmc8', 0.01), '/w')
    self.assertEqual(cfg.stage, 'atmc8')
    self.assertEqual(cfg.sparsity, 0.01)
    self.assertEqual(cfg.bits, 4)
    self.assertEqual(cfg.num_epochs, 2)
    self.assertEqual(cfg.learning_rate, 0.1)
    self.assertEqual(cfg.nested.to_dict(), dict(a=1, b=3))
    self.assertEqual(cfg.init_from, os.path.join('/w', 'atmc32_p0.01'))
    cfg = reproduce.stage_config(grid, reproduce.Stage('da'), '/w')
    self.assertEqual((cfg.stage, cfg.bits, cfg.init_from, cfg.num_epochs),
                     ('da', None, '', 9))
    self.assertEqual(grid.base.stage, 'natural')  # The grid is not modified.


class GridConfigTest(parameterized.TestCase):

  @parameterized.parameters('fmnist_quick', 'fmnist_grid')
  def test_every_stage_config_validates(self, name):
    grid = reproduce.load_config_module(
        os.path.join(_CONFIG_DIR, f'{name}.py')).get_config()
    self.assertIn('python -m experiments.reproduce', grid_doc(name))
    stages = reproduce.plan_stages(grid.methods, grid.sparsities)
    if name == 'fmnist_quick':
      self.assertEqual([s.name for s in stages], [
          'da', 'al0_p0.01', 'atmc32_p0.01', 'atmc8_p0.01'])
    else:
      self.assertLen(stages, 2 + 6 * 4)
    for stage in stages:
      cfg = training.apply_stage(
          reproduce.stage_config(grid, stage, '/runs/x'))
      training.validate_config(cfg, num_devices=1)
      self.assertEqual(cfg.bits, 8 if stage.method == 'atmc8' else None)
      self.assertEqual(cfg.factorized, stage.method.startswith('atmc'))

  def test_grid_from_paper_training_config(self):
    path = os.path.join(_CONFIG_DIR, 'cifar10_resnet34.py')
    module = reproduce.load_config_module(path)
    loaded = module.get_config()
    loaded.data_dir = '/data/tfds'  # A command-line override.
    grid = reproduce.grid_from_training_config(path, loaded)
    self.assertEqual(reproduce.parse_sparsities(grid.sparsities),
                     [0.001, 0.003, 0.005, 0.01, 0.05, 0.1])
    self.assertEqual(reproduce.parse_methods(grid.methods),
                     list(reproduce.METHODS))
    self.assertEqual(grid.base_overrides.to_dict(),
                     {'data_dir': '/data/tfds'})
    for stage, epochs, lr in ((reproduce.Stage('da'), 200, 0.05),
                              (reproduce.Stage('al0', 0.005), 200, 0.01),
                              (reproduce.Stage('atmc8', 0.005), 150, 0.005)):
      cfg = reproduce.stage_config(grid, stage, '/runs/c10')
      self.assertEqual((cfg.stage, cfg.num_epochs, cfg.learning_rate,
                        cfg.data_dir, cfg.dataset),
                       (stage.method, epochs, lr, '/data/tfds', 'cifar10'))
    grid = reproduce.grid_from_training_config(path, loaded, 'da,ap', '0.1')
    self.assertEqual([s.name for s in reproduce.plan_stages(
        grid.methods, grid.sparsities)], ['da', 'ap_p0.1'])


class RunStageTest(absltest.TestCase):

  def test_finished_stage_is_cached_and_interrupted_one_rerun(self):
    calls = []

    def train_fn(config, workdir):
      calls.append(workdir)
      if len(calls) == 1:
        raise KeyboardInterrupt  # Interrupted before summary.json exists.
      return {'stage': config.stage, 'test_accuracy': 0.5}

    stage_dir = os.path.join(_tempdir(self), 'da')
    cfg = ml_collections.ConfigDict(dict(stage='da'))
    with self.assertRaises(KeyboardInterrupt):
      reproduce.run_stage(cfg, stage_dir, train_fn)
    self.assertFalse(reproduce.is_finished(stage_dir))
    summary, ran = reproduce.run_stage(cfg, stage_dir, train_fn)
    self.assertTrue(ran)
    self.assertEqual(summary['test_accuracy'], 0.5)
    self.assertTrue(reproduce.is_finished(stage_dir))
    summary, ran = reproduce.run_stage(cfg, stage_dir, train_fn)
    self.assertFalse(ran)
    self.assertEqual(summary['test_accuracy'], 0.5)
    self.assertLen(calls, 2)
    self.assertGreaterEqual(reproduce.stage_wall_time(stage_dir, summary), 0.0)


class SameStageConfigTest(absltest.TestCase):

  def test_parents_compared_by_name_and_everything_else_exactly(self):
    a = {'stage': 'al0', 'learning_rate': 0.01, 'init_from': '/a/runs/mnist/da'}
    self.assertTrue(reproduce._same_stage_config(
        a, dict(a, init_from='/elsewhere/mnist/da/')))
    self.assertFalse(reproduce._same_stage_config(
        a, dict(a, init_from='/a/runs/mnist/nat')))
    self.assertFalse(reproduce._same_stage_config(a, dict(a, learning_rate=1)))
    self.assertFalse(reproduce._same_stage_config(a, dict(a, init_from='')))


class KeepGoingTest(absltest.TestCase):

  def _grid(self, keep_going):
    grid = ml_collections.ConfigDict()
    grid.base = ml_collections.ConfigDict(
        dict(stage='da', dataset='synthetic', sparsity=0.5, bits=None,
             init_from=''))
    grid.methods = 'da,al0,atmc32,ap'
    grid.sparsities = '0.1'
    grid.keep_going = keep_going
    return grid

  def _train_fn(self, calls):
    def train_fn(config, workdir):
      calls.append(os.path.basename(workdir))
      if config.stage == 'al0':
        raise FloatingPointError('non-finite loss')
      return {'ta': 0.5, 'ata': 0.25, 'compression_ratio': 0.1, 'nnz': 1,
              'model_bits': 32}
    return train_fn

  def test_failed_stage_skips_its_dependents_only(self):
    workdir = _tempdir(self)
    calls = []
    with self.assertRaisesRegex(RuntimeError, r'(?s)2 of 4 stages.*'
                                r'al0_p0.1: FloatingPointError.*'
                                r'atmc32_p0.1: skipped'):
      reproduce.reproduce(self._grid(True), workdir,
                          train_fn=self._train_fn(calls))
    self.assertEqual(calls, ['da', 'al0_p0.1', 'ap_p0.1'])
    rows = _report.read_csv(os.path.join(workdir, 'results.csv'))
    self.assertEqual([(r['method'], r['p']) for r in rows],
                     [('da', None), ('ap', 0.1)])

  def test_without_keep_going_the_error_propagates(self):
    calls = []
    with self.assertRaises(FloatingPointError):
      reproduce.reproduce(self._grid(False), _tempdir(self),
                          train_fn=self._train_fn(calls))
    self.assertEqual(calls, ['da', 'al0_p0.1'])


class ReportTest(absltest.TestCase):

  def test_csv_round_trip(self):
    path = os.path.join(_tempdir(self), 'r.csv')
    _report.write_csv(_ROWS, path, _report.RESULT_FIELDS)
    back = _report.read_csv(path)
    self.assertEqual(back, _ROWS)
    with self.assertRaisesRegex(ValueError, 'lacks'):
      _report.write_csv([{'method': 'da'}], path, _report.RESULT_FIELDS)

  def test_markdown(self):
    md = _report.results_markdown(_ROWS, title='t')
    lines = [l for l in md.splitlines() if l.startswith('|')]
    self.assertIn('| method | dense: TA / ATA / ATA-paper | '
                  'p = 0.01: TA / ATA / ATA-paper | CR | '
                  'p = 0.1: TA / ATA / ATA-paper | CR |', lines[0])
    body = lines[2:]
    self.assertEqual([l.split('|')[1].strip() for l in body],
                     ['NAT', 'DA', 'AL0', 'ATMC-8'])
    self.assertIn('| ATMC-8 |  | 0.790 / 0.490 / 0.540 | 0.004 | '
                  '0.840 / 0.540 / 0.590 | 0.03 |', body[3])
    self.assertIn('| DA | 0.900 / 0.600 / 0.650 |', body[1])
    self.assertIn('ATA-paper', md)
    self.assertIn('Test examples: 500.', md)
    self.assertNotIn('training PGD attack', md)

  def test_autoattack_column_only_when_a_stage_ran_it(self):
    workdir = _tempdir(self)
    summary = dict(ta=0.9, ata=0.6, ata_paper=0.65, compression_ratio=1.0,
                   test_count=500, wall_time_s=3.0)
    plain = reproduce.result_row('synthetic', reproduce.Stage('da', None),
                                 workdir, summary)
    self.assertNotIn('autoattack', plain)
    attacked = reproduce.result_row(
        'synthetic', reproduce.Stage('al0', 0.1), workdir,
        dict(summary, autoattack_accuracy=0.52, autoattack_examples=200,
             autoattack_masking_suspected=True))
    self.assertEqual((attacked['autoattack'], attacked['autoattack_examples'],
                      attacked['autoattack_masking_suspected']),
                     (0.52, 200, True))
    self.assertEqual(_report.result_fields([plain]), _report.RESULT_FIELDS)
    reproduce.write_reports([plain], workdir)
    with open(os.path.join(workdir, 'results.csv')) as f:
      self.assertNotIn('autoattack', f.read())
    reproduce.write_reports([plain, attacked], workdir)
    back = {r['method']: r for r in
            _report.read_csv(os.path.join(workdir, 'results.csv'))}
    self.assertIsNone(back['da']['autoattack'])
    self.assertEqual(back['al0']['autoattack'], 0.52)
    self.assertEqual(back['al0']['autoattack_examples'], 200)
    self.assertIs(back['al0']['autoattack_masking_suspected'], True)
    with open(os.path.join(workdir, 'results.md')) as f:
      md = f.read()
    self.assertIn('| method | dense: TA / ATA / ATA-paper / AA | '
                  'p = 0.1: TA / ATA / ATA-paper / AA | CR |', md)
    self.assertIn('| DA | 0.900 / 0.600 / 0.650 / – |', md)
    self.assertIn('| AL0 |  | 0.900 / 0.600 / 0.650 / 0.520 | 1 |', md)
    self.assertIn('first 200 test examples', md)
    self.assertIn('masking gradients (AutoAttack more than 5 points below '
                  'PGD-20 on the same examples): AL0 (p = 0.1).', md)

  def test_closing_summary_says_what_where_and_next(self):
    text = reproduce.closing_summary(_ROWS, 'runs/x', 'Fashion-MNIST')
    self.assertIn('Trained and evaluated 6 models (NAT, DA, AL0, ATMC-8): '
                  'Fashion-MNIST.', text)
    self.assertIn(_report.results_markdown(_ROWS), text)
    self.assertIn('runs/x/results.csv', text)
    self.assertIn('python -m experiments.evaluate_attacks --workdir runs/x',
                  text)
    self.assertIn('make mnist', text)

  def test_figure(self):
    stem = os.path.join(_tempdir(self), 'fig')
    paths = _report.plot_results(_ROWS, stem, title='t')
    self.assertEqual(paths, [stem + '.png', stem + '.pdf'])
    for p in paths:
      self.assertGreater(os.path.getsize(p), 1000)
    with open(stem + '.png', 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')

  def test_attacks_markdown_flags(self):
    names = ('pgd_eps0.1', 'fgsm')
    rows = [
        {'dataset': 'd', 'method': 'al0', 'p': 0.01,
         'compression_ratio': 0.01, 'ta': 0.8, 'pgd_eps0.1': 0.5,
         'fgsm': 0.6, 'paper_pgd': 0.5, 'strong': 0.4, 'gap': 0.1,
         'masking_suspected': True},
        {'dataset': 'd', 'method': 'da', 'p': None,
         'compression_ratio': 1.0, 'ta': 0.9, 'pgd_eps0.1': 0.6,
         'fgsm': 0.7, 'paper_pgd': 0.6, 'strong': 0.58, 'gap': 0.02,
         'masking_suspected': False}]
    md = _report.attacks_markdown(rows, names, 0.05)
    self.assertIn('Flagged: AL0 (p = 0.01).', md)
    self.assertIn('| AL0 | 0.01 | 0.01 | 0.800 | 0.500 | 0.600 | 0.500 | '
                  '0.400 | +10.0 | **yes** |', md)
    self.assertIn('| DA |  | 1 | 0.900 |', md)

  def test_autoattack_markdown_flags_and_states_examples_and_times(self):
    settings = evaluate_attacks.autoattack_settings(
        default.get_config(), pgd_steps=20)
    self.assertEqual(settings['version'], 'standard')
    names = evaluate_attacks.autoattack_names(settings)
    self.assertEqual(names, ['pgd20', 'after_apgd_ce', 'after_apgd_t',
                             'after_fab_t', 'after_square', 'autoattack'])
    row = {'dataset': 'd', 'method': 'al0', 'p': 0.01,
           'compression_ratio': 0.01, 'ta': 0.8, 'pgd20': 0.5,
           'after_apgd_ce': 0.45, 'after_apgd_t': 0.43, 'after_fab_t': 0.43,
           'after_square': 0.42, 'autoattack': 0.42, 'gap': 0.08,
           'masking_suspected': True, 'num_examples': 1000,
           'pgd_wall_time_s': 12.5, 'autoattack_wall_time_s': 301.0}
    md = evaluate_attacks.autoattack_markdown([row], names, settings, 0.05)
    self.assertIn('| AL0 | 0.01 | 0.01 | 0.800 | 0.500 | 0.450 | 0.430 | '
                  '0.430 | 0.420 | 0.420 | +8.0 | **yes** | 1000 | 12.5 | '
                  '301.0 |', md)
    self.assertIn('Flagged: AL0 (p = 0.01).', md)
    self.assertIn('1000 test examples', md)
    self.assertIn('Square (5000 queries)', md)


def _mini_grid():
  """DA and AL0 at p = 0.01: LeNet on 320 real Fashion-MNIST images."""
  grid = ml_collections.ConfigDict()
  base = default.get_config()
  base.dataset = 'fashion_mnist'
  base.max_train_examples = 192 + 64
  base.num_val = 64
  base.max_test_examples = 64
  base.batch_size = 64
  base.eval_batch_size = 64
  base.num_epochs = 1
  base.lr_decay_epochs = ()
  base.train_attack.num_steps = 2
  base.eval.attack.num_steps = 2
  base.progress = False
  base.log_every_steps = 1
  grid.base = base
  grid.methods = 'da,al0'
  grid.sparsities = '0.01'
  grid.stage_overrides = {'al0': {'learning_rate': 0.005}}
  return grid


class EndToEndTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Compilation dominates this test; XLA's optimisations do not pay off.
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    self.addCleanup(jax.config.update, 'jax_disable_most_optimizations',
                    previous)

  def test_mini_grid_runs_caches_resumes_and_reports(self):
    workdir = _tempdir(self)
    grid = _mini_grid()
    calls = []

    def train_fn(config, stage_dir):
      calls.append(os.path.basename(stage_dir))
      if len(calls) == 1:  # Interrupt DA after 1 of its 3 steps.
        config = ml_collections.ConfigDict(config.to_dict())
        config.max_steps = 1
      return training.train_and_evaluate(config, stage_dir)

    # 1: DA stops early; nothing after it runs, nothing is reported.
    self.assertEqual(reproduce.reproduce(grid, workdir, train_fn=train_fn),
                     [])
    self.assertEqual(calls, ['da'])
    self.assertFalse(reproduce.is_finished(os.path.join(workdir, 'da')))
    # 2: DA resumes from its checkpoint; AL0 warm-starts from DA.
    rows = reproduce.reproduce(grid, workdir, train_fn=train_fn)
    self.assertEqual(calls, ['da', 'da', 'al0_p0.01'])
    self.assertEqual([(r['method'], r['p']) for r in rows],
                     [('da', None), ('al0', 0.01)])
    for name in ('results.csv', 'results.md', 'results.png', 'results.pdf'):
      self.assertGreater(os.path.getsize(os.path.join(workdir, name)), 100)
    self.assertEqual(_report.read_csv(os.path.join(workdir, 'results.csv')),
                     rows)
    with open(os.path.join(workdir, 'results.md')) as f:
      md = f.read()
    self.assertIn('| DA |', md)
    self.assertIn('| AL0 |', md)
    self.assertIn('p = 0.01: TA / ATA', md)
    # A finished stage keeps only its selected checkpoint: everything below
    # (warm start, reports, load_deployable, both attack suites) reads it.
    for s in ('da', 'al0_p0.01'):
      self.assertFalse(os.path.exists(os.path.join(workdir, s,
                                                   'checkpoints')), s)
      self.assertLen([d for d in os.listdir(os.path.join(workdir, s, 'best'))
                      if d.isdigit()], 1)

    # An unfinished stage started with another config is refused before its
    # stage_config.json is rewritten.
    summary_path = os.path.join(workdir, 'al0_p0.01', 'summary.json')
    with open(summary_path) as f:
      summary_text = f.read()
    os.remove(summary_path)
    stage_cfg = os.path.join(workdir, 'al0_p0.01', 'stage_config.json')
    with open(stage_cfg) as f:
      saved = f.read()
    changed = reproduce.stage_config(grid, reproduce.plan_stages(
        'al0', '0.01')[-1], workdir)
    changed.learning_rate = changed.learning_rate * 2
    with self.assertRaisesRegex(ValueError, r'learning_rate: '):
      reproduce.run_stage(changed, os.path.join(workdir, 'al0_p0.01'),
                          train_fn)
    with open(stage_cfg) as f:
      self.assertEqual(f.read(), saved)
    self.assertLen(calls, 3)
    with open(summary_path, 'w') as f:
      f.write(summary_text)

    # 3: a second full invocation trains nothing and reports the same.
    mtimes = {s: os.path.getmtime(os.path.join(workdir, s, 'summary.json'))
              for s in ('da', 'al0_p0.01')}
    self.assertEqual(reproduce.reproduce(grid, workdir, train_fn=train_fn),
                     rows)
    self.assertLen(calls, 3)
    for s, t in mtimes.items():
      self.assertEqual(os.path.getmtime(
          os.path.join(workdir, s, 'summary.json')), t)

    # The reported sizes are those of the deployable model in the checkpoint.
    for row, stage in zip(rows, ('da', 'al0_p0.01')):
      dep = reproduce.load_deployable(os.path.join(workdir, stage))
      ratio = optim.compression_ratio(dep.params, dep.dense_weight_count)
      self.assertAlmostEqual(row['compression_ratio'], ratio, places=12)
      self.assertEqual(row['nnz'], int(optim.compression_stats(
          dep.params)['nnz']))
      self.assertEqual(row['bits'], optim.model_size_bits(dep.params))
      self.assertBetween(row['ta'], 0.0, 1.0)
      self.assertBetween(row['ata'], 0.0, row['ta'] + 1e-9)
    self.assertEqual(rows[0]['compression_ratio'], 1.0)
    budget = int(0.01 * 430500)  # CaffeLeNet's dense weight count.
    self.assertEqual(rows[1]['nnz'], budget)
    self.assertAlmostEqual(rows[1]['compression_ratio'], budget / 430500)

    # Other attacks on the same models (tiny settings).
    att = evaluate_attacks.evaluate_attacks(
        workdir, max_examples=16, batch_size=16, eps_scales=(1.0, 2.0),
        wrm_steps=2, strong_pgd_steps=2, strong_pgd_restarts=1, apgd_steps=2)
    names = ['pgd_eps0.1', 'pgd_eps0.2', 'fgsm_eps0.1', 'wrm_gamma1.3',
             'pgd2x1', 'apgd_ce']
    back = _report.read_csv(os.path.join(workdir, 'attacks.csv'))
    self.assertEqual([(r['method'], r['p']) for r in back],
                     [('da', None), ('al0', 0.01)])
    for row, r in zip(att, back):
      self.assertEqual(list(r), list(_report.attack_fields(names)))
      self.assertAlmostEqual(r['compression_ratio'],
                             row['compression_ratio'])
      for n in names:
        self.assertBetween(r[n], 0.0, r['ta'])
      self.assertAlmostEqual(r['paper_pgd'], r['pgd_eps0.1'])
      self.assertLessEqual(r['strong'], min(r['pgd2x1'], r['apgd_ce']))
      self.assertAlmostEqual(r['gap'], r['paper_pgd'] - r['strong'])
      self.assertEqual(r['masking_suspected'], r['gap'] > 0.05)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'attacks.md')))
    with open(os.path.join(workdir, 'attacks.md')) as f:
      md = f.read()
    self.assertIn('16 test examples', md)
    self.assertRegex(md, r'wall time of each evaluation: DA [0-9.]+ s, '
                     r'AL0 \(p = 0.01\) [0-9.]+ s\.')

    # AutoAttack beside PGD-20 (tiny settings).
    aa_kw = dict(max_examples=16, batch_size=8, pgd_steps=2, num_steps=2,
                 num_targets=2, num_queries=3)
    aa = evaluate_attacks.evaluate_autoattack(workdir, **aa_kw)
    aa_names = ['pgd2', 'after_apgd_ce', 'after_apgd_t', 'after_fab_t',
                'after_square', 'autoattack']
    back = _report.read_csv(os.path.join(workdir, 'autoattack.csv'))
    self.assertEqual([(r['method'], r['p']) for r in back],
                     [('da', None), ('al0', 0.01)])
    for row, r in zip(aa, back):
      self.assertEqual(list(r)[5:11], aa_names)
      accs = [r['ta']] + [r[n] for n in aa_names[1:]]
      self.assertEqual(accs, sorted(accs, reverse=True))  # cumulative
      self.assertBetween(r['pgd2'], 0.0, r['ta'])
      self.assertAlmostEqual(r['gap'], r['pgd2'] - r['autoattack'])
      self.assertEqual(r['masking_suspected'], r['gap'] > 0.05)
      self.assertEqual(r['num_examples'], 16)
      self.assertGreater(r['autoattack_wall_time_s'], 0.0)
      self.assertAlmostEqual(r['autoattack'], row['autoattack'])
    with open(os.path.join(workdir, 'autoattack.md')) as f:
      md = f.read()
    self.assertIn('16 test examples', md)
    self.assertIn('AutoAttack (reduced)', md)
    # Cached: a second call computes nothing and reports the same.
    self.assertEqual(evaluate_attacks.evaluate_autoattack(workdir, **aa_kw),
                     aa)


if __name__ == '__main__':
  absltest.main()


class AttackArgumentsTest(absltest.TestCase):

  def test_both_suites_check_their_arguments_and_the_workdir(self):
    workdir = _tempdir(self)
    for fn in (evaluate_attacks.evaluate_attacks,
               evaluate_attacks.evaluate_autoattack):
      with self.assertRaisesRegex(ValueError, r'gap_threshold=2.*\[0, 1\]'):
        fn(workdir, gap_threshold=2.0)
      with self.assertRaisesRegex(ValueError, r'batch_size=0.*>= 1'):
        fn(workdir, batch_size=0)
      for bad in (0, -5):
        with self.assertRaisesRegex(
            ValueError, rf'max_examples={bad} is invalid; accepted: an '
            r'integer >= 1, or None \(the whole test split\)'):
          fn(workdir, max_examples=bad)
      with self.assertRaisesRegex(ValueError, 'holds no finished stage'):
        fn(workdir)


class PaperComparisonTest(absltest.TestCase):

  def test_readoffs_and_matching(self):
    from experiments import paper_readoffs  # pylint: disable=g-import-not-at-top
    paper = paper_readoffs.paper_rows('mnist')
    self.assertIn(dict(method='da', p=None, compression_ratio=1.0, ta=.981,
                       ata=.783), paper)
    match = paper_readoffs.matching_row
    self.assertEqual(match(paper, dict(method='atmc8', p=0.01))['ta'], .875)
    self.assertEqual(match(paper, dict(method='al0', p=0.003))['ata'], .61)
    alr = match(paper, dict(method='alr', p=0.04, compression_ratio=0.012))
    self.assertEqual(alr['compression_ratio'], 0.014)
    self.assertIsNone(match(paper, dict(method='alr', p=0.5,
                                        compression_ratio=0.3)))
    self.assertIsNone(match(paper, dict(method='al0', p=0.02)))
    with self.assertRaisesRegex(ValueError, 'accepted'):
      paper_readoffs.paper_rows('svhn2')

  def test_comparison_table_and_figure(self):
    from experiments import paper_readoffs  # pylint: disable=g-import-not-at-top
    rows = [_row('da', None, 1.0, 0.97, 0.70),
            _row('atmc8', 0.01, 0.0049, 0.88, 0.70)]
    md = _report.comparison_markdown(rows, paper_readoffs.paper_rows('mnist'),
                                     paper_readoffs.matching_row)
    # ATMC-8 at p = 0.01: TA 0.88 vs 0.875 (+0.5), ATA-paper 0.75 vs 0.73.
    self.assertIn('| ATMC-8 | 0.01 | 0.0049 | 0.0048 | 0.880 | 0.875 | +0.5 '
                  '| 0.750 | 0.730 | +2.0 | 0.700 |', md)
    self.assertIn('| DA |  | 1 | 1 | 0.970 | 0.981 | -1.1 |', md)
    workdir = _tempdir(self)
    paths = reproduce.write_reports(rows, workdir, title='t',
                                    paper_dataset='mnist')
    with open(paths['comparison']) as f:
      self.assertEqual(f.read(), md)
    self.assertGreater(os.path.getsize(paths['png']), 1000)
