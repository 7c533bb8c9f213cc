"""Tests for experiments.export and packed files in evaluate_attacks."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from atmc_jax import data
from atmc_jax import export
from atmc_jax import optim
from atmc_jax import training
from experiments import evaluate_attacks
from experiments import export as export_cli
from experiments import reproduce
from experiments.configs import default


def _fmnist_available():
  d = data.find_idx_dir()
  return d is not None and os.path.exists(
      os.path.join(d, 't10k-images-idx3-ubyte.gz'))


def _fake_stage(stage_dir):
  """A finished ATMC-8 stage: config, summary, and its Deployed model."""
  config = default.get_config()
  config.stage, config.compression = 'atmc8', 'atmc'
  config.factorized, config.bits, config.sparsity = True, 8, 0.01
  spec = data.DATASETS[config.dataset]
  model = training.create_model(config, spec)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))['params']
  params = jax.tree.map(
      lambda x: 0.5 * x / jnp.std(x) if x.ndim == 2 and jnp.std(x) > 0
      else x, params)
  state = optim.atmc(optax.sgd(0.1), budget=4305, bits=8).init(params)
  deployed = jax.device_get(optim.deployable_params(params, state))
  os.makedirs(stage_dir)
  with open(os.path.join(stage_dir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort())
  stats = optim.compression_stats(deployed)
  summary = {'status': 'finished', 'stage': 'atmc8',
             'dataset': 'fashion_mnist', 'model': 'lenet', 'ta': 0.1,
             'ata': 0.05, 'nnz': stats['nnz'],
             'compression_ratio': stats['ratio'], 'compression': 'atmc',
             'sparsity': 0.01, 'bits': 8}
  with open(os.path.join(stage_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f)
  dep = reproduce.Deployed(
      config=reproduce.read_stage_config(stage_dir), model=model,
      params=deployed, batch_stats={}, dense_weight_count=430500,
      size={'nnz': stats['nnz'], 'model_bits': stats['bits'],
            'compression_ratio': stats['ratio']})
  return dep


class ExportCommandTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_export_card_torch_layout_and_attacks_on_the_file(self):
    if not _fmnist_available():
      self.skipTest('Fashion-MNIST IDX files absent')
    stage_dir = os.path.join(self.dir, 'atmc8_p0.01')
    dep = _fake_stage(stage_dir)
    out = os.path.join(self.dir, 'lenet.atmc')
    npz = os.path.join(self.dir, 'lenet_torch.npz')
    with mock.patch.object(reproduce, 'load_deployable', return_value=dep):
      report = export_cli.export_stage(stage_dir, out, torch_npz=npz,
                                       check_examples=200)
    self.assertEqual(report['total']['accounted_bits'],
                     optim.model_size_bits(dep.params))
    self.assertEqual(report['total']['file_bytes'], os.path.getsize(out))
    meta = export.read_header(out)['metadata']
    self.assertEqual(meta['model'], 'lenet')
    self.assertEqual(meta['threat_model']['epsilon'], 0.1)
    self.assertEqual(meta['metrics']['ta'], 0.1)
    spec_mean = data.DATASETS['fashion_mnist'].mean
    self.assertEqual(meta['model_config'].get('mean'),
                     None if spec_mean is None else list(spec_mean))
    self.assertEqual(meta['model_config']['factorized'], True)

    # The card's check is the accuracy of the stage's own (Flax) model.
    images, labels = data.load_split('fashion_mnist', 'test')
    x = images[:200].astype(np.float32) / 255.0
    flax_logits = np.asarray(dep.model.apply({'params': dep.params}, x))
    with open(export.card_paths(out)[0]) as f:
      card = json.load(f)
    self.assertEqual(card['checks']['test_examples'], 200)
    self.assertAlmostEqual(card['checks']['test_accuracy'],
                           float((flax_logits.argmax(1)
                                  == labels[:200]).mean()))
    checked = export_cli.verify_card(out, images, labels)
    self.assertEqual(checked['measured'], card['checks']['test_accuracy'])
    with open(export.card_paths(out)[0], 'w') as f:
      card['checks']['test_accuracy'] += 0.1
      json.dump(card, f)
    with self.assertRaisesRegex(ValueError, 'the card records'):
      export_cli.verify_card(out, images, labels)

    # PyTorch layout.
    with np.load(npz) as z:
      self.assertEqual(z['conv1.weight'].shape, (20, 1, 5, 5))
      self.assertEqual(z['fc1.weight'].shape, (500, 800))

    # The packed file as a Deployed, and attacked like a workdir.
    packed = reproduce.load_packed(out)
    np.testing.assert_allclose(np.asarray(packed.logits_fn()(x)),
                               flax_logits, atol=1e-5)
    self.assertEqual(packed.size['nnz'], dep.size['nnz'])
    rows = evaluate_attacks.evaluate_attacks(
        out, max_examples=16, batch_size=16, eps_scales=(1.0,),
        wrm_steps=1, strong_pgd_steps=1, strong_pgd_restarts=1,
        apgd_steps=1)
    self.assertLen(rows, 1)
    self.assertEqual((rows[0]['method'], rows[0]['p']), ('atmc8', 0.01))
    self.assertAlmostEqual(rows[0]['compression_ratio'],
                           dep.size['compression_ratio'])
    for suffix in ('attacks.csv', 'attacks.md', 'attacks.json'):
      self.assertTrue(os.path.exists(os.path.join(self.dir,
                                                  'lenet.' + suffix)))

  def test_not_a_finished_stage(self):
    with self.assertRaisesRegex(ValueError, 'holds no summary.json'):
      export_cli.export_stage(self.dir, os.path.join(self.dir, 'x.atmc'))


if __name__ == '__main__':
  absltest.main()
