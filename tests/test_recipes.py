"""Recipes as data: the scripts' commands are derived from `diffusion_tf.recipes`, with the same
flags, order, defaults and help as the hand-written commands they replaced (recorded from them in
tests/fixtures/script_signatures.json before the change)."""

import importlib
import importlib.util
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from diffusion_tf import recipes, validation
from diffusion_tf.errors import FlagError

FIXTURE = Path(__file__).parent / 'fixtures' / 'script_signatures.json'
RECORDED = json.loads(FIXTURE.read_text())
SCRIPT_RECIPES = {'run_cifar': 'cifar10', 'run_celebahq': 'celebahq', 'run_lsun': 'lsun',
                  'run_digits': 'digits'}
CASES = [(script, command) for script, commands in RECORDED.items() for command in commands]


def _command(script, command):
  return getattr(importlib.import_module(f'scripts.{script}'), command)


@pytest.mark.parametrize('script,command', CASES, ids=[f'{s}-{c}' for s, c in CASES])
def test_command_flags_order_and_defaults_are_as_before(script, command):
  params = inspect.signature(_command(script, command)).parameters.values()
  got = [{'name': p.name, 'kind': p.kind.name, 'required': p.default is inspect.Parameter.empty,
          'default': None if p.default is inspect.Parameter.empty else repr(p.default)}
         for p in params]
  assert got == RECORDED[script][command]['flags']


@pytest.mark.parametrize('script,command', CASES, ids=[f'{s}-{c}' for s, c in CASES])
def test_command_help_is_as_before(script, command):
  doc = inspect.getdoc(_command(script, command))
  assert ' '.join(doc.split()) == RECORDED[script][command]['help']


def test_a_default_is_stated_once_in_the_recipe():
  # The flag's default is the recipe's field: change the field, the command changes.
  changed = recipes.CIFAR10.with_flags({'lr': 1e-4, 'dropout': 0.3, 'total_bs': 32})
  assert (changed.train.lr, changed.model.dropout, changed.train.total_bs) == (1e-4, 0.3, 32)
  assert changed.defaults('train')['lr'] == 1e-4
  assert changed.evaluation.total_bs == recipes.CIFAR10.evaluation.total_bs == 256
  evaluated = recipes.CIFAR10.with_flags({'total_bs': 8}, 'evaluation')
  assert (evaluated.evaluation.total_bs, evaluated.train.total_bs) == (8, 128)


def test_which_diffusion_is_a_field():
  assert recipes.CIFAR10.diffusion.version == recipes.DIGITS.diffusion.version == 2
  assert recipes.CELEBAHQ.diffusion.version == recipes.LSUN.diffusion.version == 1
  # The v2 flags are not in the v1 scripts' train command.
  assert 'model_mean_type' not in sum(recipes.LSUN.flags('train'), ())


@pytest.mark.parametrize('name', sorted(recipes.RECIPES))
def test_a_run_is_matched_to_the_recipe_of_its_script(name):
  recipe = recipes.RECIPES[name]
  recorded = dict(recipe.defaults('train'), region=None, lr=0.5)
  found = recipes.recipe_of_run(recorded)
  assert found.name == name and found.train.lr == 0.5


def test_an_older_digits_run_without_later_options_is_still_a_digits_run():
  recorded = recipes.DIGITS.defaults('train')
  for later in ('channels', 'lr_schedule', 'sample_steps', 'seed'):
    recorded.pop(later)
  assert recipes.recipe_of_run(recorded).name == 'digits'


def test_experiment_names_follow_the_original_templates():
  assert recipes.CIFAR10.experiment_name() == (
      'EXP_cifar10_unet2d16b2_adam_bs128_lr0.0002w5000_beta0.0001-0.02-linear_t1000_'
      'eps-fixedlarge-mse_dropout0.1_randflip1')
  assert recipes.LSUN.experiment_name() == (
      'EXP_lsun_unet2d16b2c112244_adam_bs64_lr2e-05w5000_beta0.0001-0.02-linear_t1000_'
      'noisepred_dropout0.0_randflip1_blk1')


def test_loss_type_rule_follows_the_recipe_version():
  v1 = _command('run_lsun', 'train')
  with pytest.raises(FlagError, match='--loss_type must be one of noisepred'):
    validation.check_call(v1, (), {'loss_type': 'mse'})
  validation.check_call(_command('run_cifar', 'train'), (), {'loss_type': 'kl'})


def test_command_called_from_python_hands_every_flag_to_its_body(monkeypatch):
  from diffusion_tf import runners
  seen = {}
  monkeypatch.setitem(runners.COMMANDS, 'sample', lambda recipe, flags: seen.update(
      recipe=recipe, flags=flags))
  _command('run_digits', 'sample')('RUN', steps=20, sampler='ddim')
  assert seen['recipe'] is recipes.DIGITS
  assert seen['flags'] == dict(recipes.DIGITS.defaults('sample'), model_dir='RUN', steps=20,
                               sampler='ddim')


# ----------------------------------------------------------------------------- runs made before

def _legacy_runs_module():
  path = Path(__file__).parent / 'fixtures' / 'make_legacy_runs.py'
  spec = importlib.util.spec_from_file_location('make_legacy_runs', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LEGACY = _legacy_runs_module()


@pytest.mark.parametrize('name', [n if n == 'digits' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(LEGACY.RUNS)])
def test_a_run_made_before_recipes_resumes_and_samples(name, tmp_path, monkeypatch, capsys):
  import shutil

  import tensorflow as tf

  from diffusion_tf.models import unet
  script, flags = LEGACY.RUNS[name]
  monkeypatch.setitem(unet.MODEL_CONFIGS, LEGACY.TINY_NAME, LEGACY.TINY)
  shutil.copytree(Path(LEGACY.HERE) / name, tmp_path / name)
  monkeypatch.chdir(tmp_path / name)
  if flags.get('folder'):
    LEGACY.write_images(flags['folder'])
  (run,) = [str(p) for p in Path('logs', '9999-99-99').iterdir()]
  recorded = json.loads(Path(run, 'kwargs.json').read_text())
  commands = importlib.import_module(f'scripts.{script}')

  commands.train(max_steps=LEGACY.STEPS + 1, log_dir='logs', keep_checkpoint_max=1, **flags)
  out = capsys.readouterr().out
  assert f'Resuming from {run}/model.ckpt-{LEGACY.STEPS} (step {LEGACY.STEPS})' in out
  assert tf.train.latest_checkpoint(run) == f'{run}/model.ckpt-{LEGACY.STEPS + 1}'
  # The record keeps its keys; only the resume-safe step limit changed.
  assert json.loads(Path(run, 'kwargs.json').read_text()) == dict(recorded, max_steps=LEGACY.STEPS + 1)

  commands.sample(model_dir=run, num_samples=2, batch_size=2, sampler='ddim', steps=2)
  with np.load(f'{run}/samples_ddim2_eta0.0_ema1_step{LEGACY.STEPS + 1}.npz') as f:
    assert f['samples'].shape == (2, 8, 8, 1 if name == 'digits' else 3)
  if script == 'run_celebahq':  # the LSUN script has the same v1 model and defaults
    importlib.import_module('scripts.run_lsun').sample(
        ckpt=f'{run}/model.ckpt-{LEGACY.STEPS + 1}', num_samples=2, batch_size=2, steps=2,
        out='lsun_sample')
    with np.load('lsun_sample.npz') as f:
      assert f['samples'].shape == (2, 8, 8, 3)
