"""Per-device train and eval steps written with named-axis collectives.

The functions built here run on ONE device's share of the batch and talk to
the other devices only through ``lax.pmean`` / ``lax.psum`` over the axis
``"batch"`` (gradients, metrics, BatchNorm statistics through the model's
``bn_axis_name``). ``atmc_jax.training.parallel`` maps them over devices;
nothing here knows how many devices there are, so the same step runs under
``jax.pmap`` today and under ``shard_map`` / ``jit`` later.

Losses (``config.loss``):

* ``"natural"``: :math:`\\mathrm{CE}(f_W(x), y)`;
* ``"adversarial"`` (the paper): :math:`\\mathrm{CE}(f_W(x^{adv}), y)`;
* ``"mixed"`` (the reference code for MNIST / CIFAR-10):
  :math:`\\tfrac12\\mathrm{CE}(f_W(x), y) + \\tfrac12\\mathrm{CE}(f_W(x^{adv}), y)`,

with :math:`x^{adv}` from PGD on the current weights. PGD crafts with
BatchNorm in inference mode (running statistics) by default;
``attack_bn_mode="train"`` reproduces the reference's crafting in train mode
(batch statistics, dropout on; the running statistics are not updated by the
attack passes, unlike the reference). The attack (and the evaluation) of a
factorized model runs on its dense twin (:func:`make_logits_fn`): the
matrices ``W = U·V + C`` are formed once per step, not once per attack
iteration; the training passes still differentiate through the factors.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
from jax import lax
import jax.numpy as jnp
import optax

from atmc_jax import attacks
from atmc_jax import models
from atmc_jax.training import _state
from atmc_jax.training.parallel import AXIS_NAME

StepFn = Callable[..., Any]


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def _device_key(key, step):
  """A per-step, per-device key: ``fold_in(fold_in(key, step), device)``."""
  key = jax.random.fold_in(key, step)
  return jax.random.fold_in(key, lax.axis_index(AXIS_NAME))


def _inference_twin(model, params, image_shape):
  """The dense model and params an attack runs (factors formed once)."""
  if isinstance(model, models.LowRankModel):
    return models.dense_twin(model, params, image_shape or ())
  if getattr(model, 'factorized', False):
    if image_shape is None:
      raise ValueError(
          'image_shape=None for a factorized model; accepted: one input '
          'image\'s shape (H, W, C).')
    return models.dense_twin(model, params, image_shape)
  return model, params


@dataclasses.dataclass(frozen=True)
class _InferenceApply:
  """``(params, batch_stats, x) -> logits`` of a model in inference mode.

  Hashable and equal for equal models, so a ``jax.tree_util.Partial`` over
  it with the params as arguments compiles once per architecture.
  """

  model: Any

  def __call__(self, params, batch_stats, x):
    return self.model.apply({'params': params, 'batch_stats': batch_stats},
                            x, train=False)


def logits_partial(model, params, batch_stats, *, image_shape=None
                   ) -> jax.tree_util.Partial:
  """``x -> logits`` (inference mode) as a ``jax.tree_util.Partial``.

  The params and BatchNorm statistics are the Partial's arguments, so they
  are traced, not baked into the compiled attack as constants: attacking
  another model of the same architecture reuses the compiled code. A
  factorized model runs as its dense twin, as in :func:`make_logits_fn`.

  Args:
    model: a Flax Linen model taking ``[0, 1]`` NHWC images.
    params: its parameters.
    batch_stats: its BatchNorm statistics (``{}`` without BatchNorm).
    image_shape: one input image's shape; required for a factorized model.

  Returns:
    A ``jax.tree_util.Partial`` to pass as an attack's ``logits_fn``.
  """
  model, params = _inference_twin(model, params, image_shape)
  return jax.tree_util.Partial(_InferenceApply(model), params, batch_stats)


def make_logits_fn(model, params, batch_stats, *, image_shape=None,
                   train: bool = False,
                   dropout_key=None) -> Callable[[jax.Array], jax.Array]:
  """The closure ``x -> logits`` an attack (or an evaluation) needs.

  The closure never differentiates with respect to ``params``, so a
  factorized model runs as its dense twin (:func:`atmc_jax.models.dense_twin`):
  every ``W = U·V + C`` is formed once, here, instead of in every call (an
  attack calls the closure once per iteration). The logits are those of
  ``model`` up to the float rounding of the matrices' layout; a dense model
  runs as it is.

  Args:
    model: a Flax Linen model taking ``[0, 1]`` NHWC images.
    params: its parameters.
    batch_stats: its BatchNorm statistics (``{}`` without BatchNorm).
    image_shape: one input image's shape ``(H, W, C)``; required for a
      factorized model (it fixes the conv kernels' layout), unused otherwise.
    train: BatchNorm with batch statistics (and dropout on) when True; the
      running statistics are read but never updated.
    dropout_key: the dropout key, needed when ``train`` is True.

  Returns:
    ``logits_fn(x) -> logits``.

  Raises:
    ValueError: a factorized ``model`` without ``image_shape``.
  """
  model, params = _inference_twin(model, params, image_shape)
  variables = {'params': params, 'batch_stats': batch_stats}
  if not train:
    return lambda x: model.apply(variables, x, train=False)
  rngs = {'dropout': dropout_key} if dropout_key is not None else {}

  def logits_fn(x):
    logits, _ = model.apply(variables, x, train=True,
                            mutable=['batch_stats'], rngs=rngs)
    return logits

  return logits_fn


def make_train_step(model, tx: optax.GradientTransformation, *,
                    loss: str, attack: Mapping[str, Any],
                    attack_bn_mode: str = 'eval') -> StepFn:
  """Builds the per-device ``train_step(state, batch, key)``.

  Args:
    model: a Flax Linen model (``model.apply(variables, x, train=...)``),
      whose BatchNorm (if any) reduces over the axis ``"batch"``.
    tx: the full optimizer (weight decay, SGD and the compression transform).
    loss: ``"natural"``, ``"adversarial"`` or ``"mixed"``.
    attack: keyword arguments of :func:`atmc_jax.attacks.pgd` (``epsilon``,
      ``num_steps``, ``step_size``, ``norm``, ``random_start``...).
    attack_bn_mode: ``"eval"`` (running statistics) or ``"train"``.

  Returns:
    ``train_step(state, batch, key) -> (state, metrics)``; ``batch`` is a dict
    with ``image`` (``[0, 1]`` NHWC) and ``label``; ``key`` is the run's base
    key (the step folds in ``state.step`` and the device index). ``metrics``
    holds ``loss``, ``accuracy`` (clean, train mode) and, for adversarial
    losses, ``adv_accuracy``, all averaged over devices.

  Raises:
    ValueError: unknown ``loss`` or ``attack_bn_mode``.
  """
  if loss not in ('natural', 'adversarial', 'mixed'):
    raise ValueError(f'loss={loss!r}; accepted: natural, adversarial, mixed.')
  if attack_bn_mode not in ('eval', 'train'):
    raise ValueError(
        f'attack_bn_mode={attack_bn_mode!r}; accepted: eval, train.')
  attack = dict(attack)

  def forward(params, batch_stats, x, dropout_key):
    logits, new_vars = model.apply(
        {'params': params, 'batch_stats': batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    return logits, new_vars.get('batch_stats', batch_stats)

  def train_step(state: _state.TrainState, batch, key):
    key = _device_key(key, state.step)
    attack_key, dropout_key, adv_dropout_key, attack_drop_key = (
        jax.random.split(key, 4))
    x, y = batch['image'], batch['label']

    x_adv = None
    if loss != 'natural':
      logits_fn = make_logits_fn(
          model, state.params, state.batch_stats, image_shape=x.shape[1:],
          train=attack_bn_mode == 'train', dropout_key=attack_drop_key)
      x_adv = lax.stop_gradient(
          attacks.pgd(logits_fn, x, y, attack_key, **attack))

    def loss_fn(params):
      batch_stats = state.batch_stats
      aux = {}
      total = 0.0
      if loss in ('natural', 'mixed'):
        logits, batch_stats = forward(params, batch_stats, x, dropout_key)
        clean_loss = _cross_entropy(logits, y)
        total = clean_loss if loss == 'natural' else 0.5 * clean_loss
        aux['accuracy'] = jnp.mean(jnp.argmax(logits, -1) == y)
      if loss in ('adversarial', 'mixed'):
        adv_logits, batch_stats = forward(
            params, batch_stats, x_adv, adv_dropout_key)
        adv_loss = _cross_entropy(adv_logits, y)
        total = adv_loss if loss == 'adversarial' else total + 0.5 * adv_loss
        aux['adv_accuracy'] = jnp.mean(jnp.argmax(adv_logits, -1) == y)
      return total, (batch_stats, aux)

    (loss_value, (batch_stats, aux)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS_NAME)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # BatchNorm already reduced its statistics over the axis; the pmean keeps
    # replicas bit-identical whatever the model does.
    batch_stats = lax.pmean(batch_stats, AXIS_NAME)
    metrics = dict(aux, loss=loss_value)
    metrics = lax.pmean(metrics, AXIS_NAME)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model, *, attack: Mapping[str, Any] | None) -> StepFn:
  """Builds the per-device ``eval_step(params, batch_stats, batch, key)``.

  Args:
    model: a Flax Linen model.
    attack: keyword arguments of :func:`atmc_jax.attacks.pgd`, or None for
      clean accuracy only.

  Returns:
    ``eval_step(params, batch_stats, batch, key) -> counts`` with ``count``
    (real examples; padding has ``batch["mask"] == 0``), ``clean_correct``
    and ``adv_correct``, each summed over devices with ``lax.psum``. The
    model runs in inference mode, for the clean pass and for the attack.
  """
  attack = dict(attack) if attack is not None else None

  def eval_step(params, batch_stats, batch, key):
    x, y = batch['image'], batch['label']
    mask = batch.get('mask')
    mask = (jnp.ones(y.shape, jnp.float32) if mask is None
            else mask.astype(jnp.float32))
    logits_fn = make_logits_fn(model, params, batch_stats,
                               image_shape=x.shape[1:])
    clean = (jnp.argmax(logits_fn(x), -1) == y).astype(jnp.float32)
    counts = {'count': jnp.sum(mask),
              'clean_correct': jnp.sum(clean * mask)}
    if attack is not None:
      key = jax.random.fold_in(key, lax.axis_index(AXIS_NAME))
      x_adv = attacks.pgd(logits_fn, x, y, key, **attack)
      adv = (jnp.argmax(logits_fn(x_adv), -1) == y).astype(jnp.float32)
      counts['adv_correct'] = jnp.sum(adv * mask)
    return lax.psum(counts, AXIS_NAME)

  return eval_step
