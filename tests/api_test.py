"""The public surface: every documented name is importable and re-exported."""

import inspect

import atmc_jax
from atmc_jax import attacks
from atmc_jax import data
from atmc_jax import export
from atmc_jax import models
from atmc_jax import optim
from atmc_jax import projections
from atmc_jax import training
import pytest

PUBLIC = {
    attacks: ['pgd', 'fgsm', 'wrm', 'apgd', 'robust_accuracy',
              'reference_step_size', 'paper_attack_suite', 'apgd_targeted',
              'fab', 'square', 'autoattack', 'AutoAttackResult',
              'standard_attacks', 'dlr_targeted_loss', 'masking_suspected',
              'MASKING_GAP'],
    projections: ['project_l0', 'project_quantize', 'quantize_codebook',
                  'dequantize', 'project_low_rank', 'project_low_rank_global',
                  'low_rank_ranks', 'low_rank_factors', 'project_atmc'],
    models: ['CaffeLeNet', 'ResNet34', 'WideResNet', 'WRN16_8',
             'FactorizedDense', 'FactorizedConv', 'factorize', 'materialize',
             'create_model', 'model_names', 'max_pool_2x2', 'conv2d',
             'conv2d_max_pool'],
    export: ['save', 'load', 'LoadedModel', 'read_header', 'size_report',
             'format_size_report', 'lenet_logits', 'logits',
             'to_torch_layout', 'lenet_flatten_shapes', 'write_model_card',
             'card_paths'],
    optim: ['atmc', 'AtmcState', 'AtmcConstraint', 'projected', 'fixed_support',
            'magnitude_support', 'deployable_params', 'dense_weight_count',
            'model_size_bits', 'compression_ratio', 'compression_stats'],
    data: ['DATASETS', 'load_split', 'train_val_split', 'iterate_batches',
           'num_batches', 'prefetch', 'load_idx_split', 'find_idx_dir'],
    training: ['train_and_evaluate', 'TrainState', 'validate_config',
               'apply_stage', 'STAGES', 'parallel'],
}


@pytest.mark.parametrize('module', list(PUBLIC), ids=lambda m: m.__name__)
def test_public_names_exist(module):
  missing = [n for n in PUBLIC[module] if not hasattr(module, n)]
  assert not missing, f'{module.__name__} lacks {missing}'


def test_top_level_reexports_are_the_same_objects():
  for name in ['pgd', 'fgsm', 'wrm', 'apgd', 'robust_accuracy',
               'autoattack']:
    assert getattr(atmc_jax, name) is getattr(attacks, name)
  for name in ['project_l0', 'project_quantize', 'project_atmc',
               'project_low_rank', 'project_low_rank_global',
               'quantize_codebook']:
    assert getattr(atmc_jax, name) is getattr(projections, name)
  for name in ['atmc', 'AtmcState', 'deployable_params', 'fixed_support',
               'projected', 'compression_ratio', 'model_size_bits',
               'dense_weight_count', 'compression_stats']:
    assert getattr(atmc_jax, name) is getattr(optim, name)
  assert atmc_jax.export is export
  assert atmc_jax.train_and_evaluate is training.train_and_evaluate
  assert atmc_jax.create_model is models.create_model


def test_public_functions_have_docstrings():
  undocumented = []
  for module, names in PUBLIC.items():
    for n in names:
      obj = getattr(module, n)
      if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (
          obj.__doc__ and obj.__doc__.strip()):
        undocumented.append(f'{module.__name__}.{n}')
  assert not undocumented, undocumented


def test_version():
  assert isinstance(atmc_jax.__version__, str)


def test_only_parallel_module_calls_pmap():
  """Data parallelism is confined to atmc_jax/training/parallel.py."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(atmc_jax.__file__).parent
  call = re.compile(r'\bpmap\(')
  offenders = [str(p.relative_to(root)) for p in root.rglob('*.py')
               if call.search(p.read_text()) and p.name != 'parallel.py']
  assert not offenders, offenders
