"""Evaluation of a stage: clean and adversarial accuracy, size, strong suite.

:class:`StageEvaluator` evaluates a host state on one split: the clean and
PGD accuracy of the trained and of the deployable params (evaluated apart
only where they differ: ATMC-8's codebook projection), optionally the
paper-protocol ATA (:func:`paper_attack_kwargs`), and the deployable
params' nnz, bits and compression ratio. :func:`strong_eval` is the
stronger suite of the final test (``config.eval.strong``);
:func:`autoattack_eval` runs AutoAttack beside PGD on the first test
examples (``config.eval.autoattack_examples``).
"""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from atmc_jax import attacks
from atmc_jax import data
from atmc_jax import optim
from atmc_jax.training import _setup
from atmc_jax.training import _steps
from atmc_jax.training import parallel


# -------------------------------------------------------------- attacks


def attack_kwargs(attack) -> dict[str, Any]:
  """The ``attacks.pgd`` keyword arguments of a config's attack block."""
  kw = dict(epsilon=float(attack.epsilon), num_steps=int(attack.num_steps),
            norm=attack.norm, random_start=bool(attack.random_start))
  if attack.get('step_size') is not None:
    kw['step_size'] = float(attack.step_size)
  if attack.get('num_restarts', 1) != 1:
    kw['num_restarts'] = int(attack.num_restarts)
  return kw


def paper_attack_kwargs(config) -> dict[str, Any]:
  """The paper's evaluation attack (spec §2.3): deterministic BIM.

  ``K = config.train_attack.num_steps`` signed steps of ``1.25 * eps / K``
  from the clean input (no random start, one restart), at the evaluation
  attack's epsilon and norm: the attack the paper trains with and reports.
  """
  epsilon = float(config.eval.attack.epsilon)
  num_steps = int(config.train_attack.num_steps)
  return dict(epsilon=epsilon, num_steps=num_steps,
              norm=config.eval.attack.norm, random_start=False,
              step_size=attacks.reference_step_size(epsilon, num_steps))


# ------------------------------------------------------------ evaluator


class SplitEvaluator:
  """Clean and PGD accuracy of replicated params over a whole split."""

  def __init__(self, config, p_eval, devices):
    self._config = config
    self._p_eval = p_eval
    self._devices = devices

  def __call__(self, params_r, stats_r, split, key, desc='eval'):
    images, labels = split
    batches = data.iterate_batches(
        images, labels, batch_size=self._config.eval_batch_size, seed=0,
        epoch=0, shuffle=False, augment='none', drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    totals = None
    for i, batch in enumerate(tqdm.tqdm(
        parallel.prefetch_to_device(batches, 2, self._devices), desc=desc,
        leave=False,
        disable=not self._config.progress or jax.process_index() != 0,
        total=len(batches))):
      out = self._p_eval(params_r, stats_r, batch,
                         jax.random.fold_in(key, i))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = {k: float(np.asarray(v)[0]) for k, v in
              jax.device_get(totals).items()}
    count = max(totals['count'], 1.0)
    return {'accuracy': totals['clean_correct'] / count,
            'adv_accuracy': totals.get('adv_correct', float('nan')) / count,
            'count': int(totals['count'])}


class StageEvaluator:
  """Metrics of a stage's host state on one of its splits."""

  def __init__(self, config: ml_collections.ConfigDict, stage: _setup.Stage,
               devices):
    self._config = config
    self._stage = stage
    self._devices = devices
    self._evaluate = self._split_evaluator(attack_kwargs(config.eval.attack))
    self._evaluate_paper = self._split_evaluator(paper_attack_kwargs(config))
    self._deployable = jax.jit(stage.compression.deployable)

  def _split_evaluator(self, attack) -> SplitEvaluator:
    p_eval = parallel.pmap_eval_step(
        _steps.make_eval_step(self._stage.model, attack=attack),
        devices=self._devices)
    return SplitEvaluator(self._config, p_eval, self._devices)

  def __call__(self, host_state, split_name, epoch, *, paper=False
               ) -> tuple[dict[str, Any], Any]:
    """Metrics of the trained and the deployable params on one split.

    Args:
      host_state: a host :class:`~atmc_jax.training.TrainState`.
      split_name: ``'val'`` or ``'test'`` (the metric names' prefix).
      epoch: folded into the evaluation key.
      paper: add the paper-protocol ATA of the deployable params.

    Returns:
      ``(metrics, deployable params)``.
    """
    devices = self._devices
    params_r = parallel.replicate(host_state.params, devices)
    stats_r = parallel.replicate(host_state.batch_stats, devices)
    ekey = jax.random.fold_in(self._stage.eval_key, epoch)
    split = self._stage.splits[split_name]
    deployable = jax.device_get(self._deployable(host_state.params))
    same = _trees_equal(deployable, host_state.params)
    trained = self._evaluate(params_r, stats_r, split, ekey,
                             desc=f'{split_name} (trained)')
    dep_r = params_r if same else parallel.replicate(deployable, devices)
    dep = trained if same else self._evaluate(
        dep_r, stats_r, split, ekey, desc=f'{split_name} (deployable)')
    out = {}
    for k in ('accuracy', 'adv_accuracy'):
      out[f'{split_name}_{k}'] = trained[k]
      out[f'{split_name}_deployable_{k}'] = dep[k]
    if paper:
      out[f'{split_name}_deployable_paper_adv_accuracy'] = (
          self._evaluate_paper(dep_r, stats_r, split, ekey,
                               desc=f'{split_name} (paper attack)')
          ['adv_accuracy'])
    out[f'{split_name}_count'] = trained['count']
    out.update(_size_stats(self._stage.compression, deployable,
                           self._stage.dense_count))
    return out, deployable

  def strong(self, deployable, batch_stats) -> dict[str, float]:
    """:func:`strong_eval` of deployable params on the test split."""
    return strong_eval(self._config, self._stage.model, deployable,
                       batch_stats, self._stage.splits['test'],
                       jax.random.fold_in(self._stage.eval_key, 2**31 - 1))

  def autoattack(self, deployable, batch_stats) -> dict[str, Any]:
    """:func:`autoattack_eval` of deployable params on the test split."""
    return autoattack_eval(self._config, self._stage.model, deployable,
                           batch_stats, self._stage.splits['test'],
                           jax.random.fold_in(self._stage.eval_key,
                                              2**31 - 2))


def _size_stats(compression, deployable, dense_count) -> dict[str, Any]:
  """nnz, model bits and compression ratio of the deployable params."""
  stats = optim.compression_stats(deployable, dense_count)
  out = {'nnz': int(stats['nnz']), 'model_bits': int(stats['bits']),
         'compression_ratio': float(stats['ratio']),
         'max_distinct': int(stats['max_distinct'])}
  alr_bits = compression.low_rank_bits(deployable)
  if alr_bits is not None:
    out['model_bits'] = alr_bits
    out['compression_ratio'] = alr_bits / (32.0 * dense_count)
  return out


def _trees_equal(a, b) -> bool:
  """Whether two host pytrees have the same structure and equal leaves."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))



def strong_eval(config, model, params, batch_stats, split, key):
  """PGD-k with restarts, APGD-CE and their per-example worst case."""
  strong = config.eval.strong_attack
  base_kw = dict(epsilon=float(config.eval.attack.epsilon),
                 norm=config.eval.attack.norm)
  suite = {
      f'pgd{strong.pgd_steps}x{strong.pgd_restarts}': functools.partial(
          attacks.pgd, num_steps=strong.pgd_steps,
          num_restarts=strong.pgd_restarts, random_start=True, **base_kw),
      'apgd_ce': functools.partial(attacks.apgd, num_steps=strong.apgd_steps,
                                   **base_kw),
  }
  logits_fn = _steps.logits_partial(model, params, batch_stats,
                                    image_shape=split[0].shape[1:])
  return attacks.robust_accuracy(
      logits_fn, _unpadded_batches(split, config.eval_batch_size), suite, key)


def _unpadded_batches(split, batch_size):
  """``(images in [0, 1], labels)`` batches of a split, in order, unpadded."""
  for batch in data.iterate_batches(
      *split, batch_size=batch_size, seed=0, epoch=0, shuffle=False,
      augment='none', drop_remainder=False):
    keep = np.asarray(batch['mask']) > 0
    yield np.asarray(batch['image'])[keep], np.asarray(batch['label'])[keep]


def autoattack_eval(config, model, params, batch_stats, split, key
                     ) -> dict[str, Any]:
  """AutoAttack and PGD on the first ``eval.autoattack_examples`` examples.

  The comparison of ``--suite autoattack`` in
  ``experiments/evaluate_attacks.py``: PGD with random start and the default
  step (``pgd_steps`` steps, 20 by default) and AutoAttack (APGD-CE, APGD-T,
  FAB-T, Square, each on the points still robust), both at
  ``config.eval.attack``'s epsilon; batches of ``config.eval_batch_size``.

  Returns:
    The summary keys ``autoattack_accuracy``,
    ``autoattack_after_<attack>`` (accuracy after the attacks up to that
    one), ``autoattack_clean_accuracy``, ``autoattack_pgd<k>_accuracy``,
    ``autoattack_gap`` (PGD minus AutoAttack accuracy),
    ``autoattack_masking_suspected`` (:func:`atmc_jax.attacks.
    masking_suspected`), ``autoattack_examples`` (the test split may hold
    fewer than asked), ``autoattack_seconds`` (the AutoAttack calls),
    ``autoattack_pgd_seconds`` and ``autoattack_settings``.
  """
  settings = config.eval.autoattack
  n = min(int(config.eval.autoattack_examples), len(split[1]))
  split = (split[0][:n], split[1][:n])
  epsilon = float(config.eval.attack.epsilon)
  norm = config.eval.attack.norm
  kw = dict(num_steps=int(settings.num_steps),
            num_targets=int(settings.num_targets),
            num_queries=int(settings.num_queries))
  standard = (kw['num_steps'], kw['num_targets'],
              kw['num_queries']) == (100, 9, 5000)
  pgd_name = f'pgd{int(settings.pgd_steps)}'
  logits_fn = _steps.logits_partial(model, params, batch_stats,
                                    image_shape=split[0].shape[1:])
  t0 = time.time()
  pgd = attacks.robust_accuracy(
      logits_fn, _unpadded_batches(split, config.eval_batch_size),
      {pgd_name: functools.partial(attacks.pgd, epsilon=epsilon, norm=norm,
                                   num_steps=int(settings.pgd_steps))}, key)
  pgd_seconds = time.time() - t0
  t0 = time.time()
  counts = dict.fromkeys(attacks.STANDARD_ATTACKS, 0.0)
  robust = 0
  for b, (x, y) in enumerate(_unpadded_batches(split,
                                               config.eval_batch_size)):
    res = attacks.autoattack(logits_fn, x, y, jax.random.fold_in(key, b),
                             epsilon=epsilon, norm=norm, **kw)
    for name in attacks.STANDARD_ATTACKS:
      counts[name] += res.accuracy[name] * len(y)
    robust += int(res.robust.sum())
  seconds = time.time() - t0
  out = {f'autoattack_after_{name.replace("-", "_")}': c / n
         for name, c in counts.items()}
  out.update(
      autoattack_accuracy=robust / n,
      autoattack_clean_accuracy=pgd['clean'],
      **{f'autoattack_{pgd_name}_accuracy': pgd[pgd_name]},
      autoattack_gap=pgd[pgd_name] - robust / n,
      autoattack_examples=n, autoattack_seconds=seconds,
      autoattack_pgd_seconds=pgd_seconds,
      autoattack_settings=dict(
          epsilon=epsilon, norm=norm, pgd_steps=int(settings.pgd_steps),
          version='standard' if standard else 'reduced', **kw))
  out['autoattack_masking_suspected'] = attacks.masking_suspected(
      out['autoattack_gap'])
  return out

