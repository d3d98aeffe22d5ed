"""Recipes as data: each data set's settings as one typed `Recipe` (in the spirit of score_sde's
``configs/``), from which the scripts' commands, their flags, defaults and ``--help``, and a
run's ``kwargs.json`` are derived.

    from diffusion_tf.recipes import CIFAR10
    CIFAR10.train.lr, CIFAR10.diffusion.model_var_type       # 0.0002, 'fixedlarge'
    CIFAR10.with_flags({'lr': 1e-4}, 'train').train.lr          # a changed copy

A flag is a field of one section; its default is the recipe's value, stated once. Which flags a
command of a script takes, and in which order (the original's positional order for ``train``),
is the recipe's `Recipe.commands`; the command bodies are in `runners`. Settings that are not
flags of a script (the CIFAR-10 EMA decay, the steps per compiled call) are recipe fields too,
so a recipe is the whole configuration of its runs.
"""

from .celebahq import CELEBAHQ
from .cifar10 import CIFAR10
from .digits import DIGITS
from .lsun import LSUN
from .recipe import (COMMON_DEFAULTS, HF_DATA_FLAGS, REQUIRED, Data, Diffusion, Editing,  # noqa: F401
                     Evaluation, Model, Recipe, Sampling, Train)

RECIPES = {r.name: r for r in (CIFAR10, CELEBAHQ, LSUN, DIGITS)}


def recipe_of_run(recorded):
  """The recipe whose ``train`` flags a run's kwargs.json records (the script that made it:
  the one whose flags it holds most of), with the recorded values set."""
  keys = set(recorded)

  def overlap(recipe):
    flags = set(sum(recipe.flags('train'), ()))
    # --hf_* flags are recorded only when set: their absence says nothing about the script.
    missing = flags - keys - set(HF_DATA_FLAGS)
    return len(keys & flags) - len(missing), recipe.data.dataset == recorded.get('dataset')

  recipe = max(RECIPES.values(), key=overlap)
  return recipe.with_flags(recorded, 'train')
