"""Models from strangers: damaged or hostile copies of a good model (diffusers folders, Hub
snapshots, TF1 checkpoint prefixes, run directories, ``.bin`` files) cost one readable
`errors.ModelFileError` (a ValueError) naming the file, raised before the network is built;
through the scripts, one ``error:`` line, exit 2, nothing written, bounded memory
(docs/reliability.md has the table of cases)."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from diffusion_tf import checkpoints, diffusers_format as fmt, loading, nn, pipelines, recipes
from diffusion_tf.errors import ModelFileError, UserError
from diffusion_tf.models import unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOGLE = os.path.join(ROOT, 'tests', 'fixtures', 'diffusers', 'google')  # flat layout
UNCOND = os.path.join(ROOT, 'tests', 'fixtures', 'diffusers', 'uncond')  # save_pretrained layout
WEIGHTS = fmt.WEIGHTS_SAFETENSORS


# ----------------------------------------------------------------------------- damages

def _edit_json(name, **changes):
  def damage(folder):
    path = os.path.join(folder, name)
    with open(path) as f:
      config = json.load(f)
    config.update(changes)
    with open(path, 'w') as f:
      json.dump(config, f)
  return damage


def _write(name, text):
  def damage(folder):
    with open(os.path.join(folder, name), 'w') as f:
      f.write(text)
  return damage


def _bytes(fn):
  """A damage of the weight file's bytes: ``fn(data) -> data``."""
  def damage(folder):
    path = os.path.join(folder, WEIGHTS)
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(fn(data))
  return damage


def _tensors(fn):
  """A damage of the weight file's tensors: ``fn(dict)`` edits them in place."""
  def damage(folder):
    path = os.path.join(folder, WEIGHTS)
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)
  return damage


def _header_garbage(data):
  length = int.from_bytes(data[:8], 'little')
  return data[:8] + b'{"conv_in.weight": [' + data[28:8 + length] + data[8 + length:]


def _nan(t):
  t['conv_in.weight'][0, 0, 0, 0] = np.nan
  t['mid_block.resnets.0.conv1.bias'][:] = np.inf


def _as_int32(t):
  t['conv_in.bias'] = t['conv_in.bias'].astype(np.int32)


# (id, damage, the error's class, fragments of its message, the check that refuses it).
# Every message must also name the damaged file. The google fixture: flat layout.
CASES = [
    ('config-not-json', _write('config.json', '{"sample_size": 8,\n  "in_channels" 3}'),
     ModelFileError, ['config.json is not valid JSON', 'line 2, column 17'], 'read_json'),
    ('config-a-list', _write('config.json', '[1, 2]'),
     ModelFileError, ['config.json holds a JSON list'], 'read_json'),
    ('config-huge-file', _write('config.json', '{"a": "' + 'x' * (17 * 2 ** 20) + '"}'),
     ModelFileError, ['config.json holds 17825801 bytes'], 'read_json size cap'),
    ('unet-class-conditional', _edit_json('config.json', _class_name='UNet2DConditionModel'),
     fmt.DiffusersFormatError, ['config.json', "_class_name 'UNet2DConditionModel'"],
     'unet_kwargs_from_config'),
    ('unet-option-unknown', _edit_json('config.json', cross_attention_dim=768),
     fmt.DiffusersFormatError, ['config.json', 'cross_attention_dim'], 'unet_kwargs_from_config'),
    ('unet-channels-negative', _edit_json('config.json', block_out_channels=[-16, 32]),
     fmt.DiffusersFormatError, ['config.json', 'block_out_channels=[-16, 32]'], '_check_types'),
    ('unet-groups-do-not-divide', _edit_json('config.json', norm_num_groups=7),
     fmt.DiffusersFormatError, ['config.json', 'not divisible into 7 groups'], 'listed_unet'),
    ('unet-1000x-larger-than-weights', _edit_json('config.json', block_out_channels=[16000, 32000]),
     fmt.DiffusersFormatError, ['does not hold the network', '173,827,600,003 parameters',
                                'the file holds 177,427', 'shape mismatch'], 'check_header counts'),
    ('unet-a-million-layers', _edit_json('config.json', layers_per_block=1000000),
     fmt.DiffusersFormatError, ['config.json describes a network of more than 144 tensors'],
     'listed_unet limit'),
    ('weights-truncated', _bytes(lambda d: d[:len(d) // 2]),
     fmt.DiffusersFormatError, [f'{WEIGHTS} is truncated'], 'read_safetensors_header offsets'),
    ('weights-length-garbage', _bytes(lambda d: b'\xff' * 8 + d[8:]),
     fmt.DiffusersFormatError, [f'{WEIGHTS} is damaged or not a safetensors file'],
     'read_safetensors_header length'),
    ('weights-header-garbage', _bytes(_header_garbage),
     fmt.DiffusersFormatError, [f'{WEIGHTS} is damaged: its header is not JSON'],
     'read_safetensors_header JSON'),
    ('weights-empty', _bytes(lambda d: b''),
     fmt.DiffusersFormatError, [f'{WEIGHTS} is damaged or not a safetensors file'],
     'read_safetensors_header length'),
    ('tensor-missing-and-unexpected', _tensors(lambda t: t.update(extra=t.pop('conv_out.bias'))),
     fmt.DiffusersFormatError, ['missing (1): conv_out.bias', 'unexpected (1): extra'],
     'check_header names'),
    ('tensor-misshaped', _tensors(lambda t: t.update({'conv_in.weight': t['conv_in.weight'][:, :, :, :1]})),
     fmt.DiffusersFormatError, ['conv_in.weight [16, 3, 3, 1] vs model [16, 3, 3, 3]'],
     'check_header shapes'),
    ('tensor-int32', _tensors(_as_int32),
     fmt.DiffusersFormatError, ['a dtype we do not read', 'conv_in.bias I32'], 'check_header dtypes'),
    ('weights-nan-and-inf', _tensors(_nan),
     ModelFileError, ['tensors holding NaN or infinite values (2)', 'conv_in.weight',
                      'mid_block.resnets.0.conv1.bias'], 'check_finite'),
    ('weights-missing', lambda f: os.remove(os.path.join(f, WEIGHTS)),
     FileNotFoundError, [f'No weights in', WEIGHTS], 'weights_file'),
    ('scheduler-not-json', _write('scheduler_config.json', '{"num_train_timesteps": 1000,}'),
     ModelFileError, ['scheduler_config.json is not valid JSON', 'line 1, column 30'], 'read_json'),
    ('scheduler-negative-timesteps', _edit_json('scheduler_config.json', num_train_timesteps=-5),
     fmt.DiffusersFormatError, ['scheduler_config.json', 'num_train_timesteps=-5 is out of range'],
     'betas_from_scheduler_config'),
    ('scheduler-zero-timesteps', _edit_json('scheduler_config.json', num_train_timesteps=0),
     fmt.DiffusersFormatError, ['num_train_timesteps=0 is out of range'], 'betas_from_scheduler_config'),
    ('scheduler-a-billion-timesteps', _edit_json('scheduler_config.json', num_train_timesteps=10 ** 9),
     fmt.DiffusersFormatError, ['num_train_timesteps=1000000000 is out of range'],
     'betas_from_scheduler_config'),
    ('scheduler-beta-above-one', _edit_json('scheduler_config.json', beta_end=1.5),
     fmt.DiffusersFormatError, ['beta_end=1.5 is out of range'], 'betas_from_scheduler_config'),
    ('scheduler-beta-zero', _edit_json('scheduler_config.json', beta_start=0),
     fmt.DiffusersFormatError, ['beta_start=0 is out of range'], 'betas_from_scheduler_config'),
    ('scheduler-trained-betas-negative',
     _edit_json('scheduler_config.json', trained_betas=[-0.1] * 1000),
     fmt.DiffusersFormatError, ['trained_betas is out of range', '1000 of its values'],
     'betas_from_scheduler_config'),
    ('scheduler-beta-schedule-unknown', _edit_json('scheduler_config.json', beta_schedule='sigmoid'),
     fmt.DiffusersFormatError, ["beta_schedule='sigmoid' is not supported"],
     'betas_from_scheduler_config'),
    ('scheduler-variance-unknown', _edit_json('scheduler_config.json', variance_type='learned_range'),
     fmt.DiffusersFormatError, ["variance_type='learned_range' is not supported"],
     'diffusion_from_scheduler_config'),
    ('scheduler-prediction-unknown', _edit_json('scheduler_config.json', prediction_type='v_prediction'),
     fmt.DiffusersFormatError, ["prediction_type='v_prediction' is not supported"],
     'diffusion_from_scheduler_config'),
    ('scheduler-class-unknown', _edit_json('scheduler_config.json', _class_name='LCMScheduler'),
     fmt.DiffusersFormatError, ["'LCMScheduler' is not supported"],
     'settings_from_scheduler_config'),
    ('model-index-conditional-unet',
     _write('model_index.json', '{"_class_name": "StableDiffusionPipeline", '
                                '"unet": ["diffusers", "UNet2DConditionModel"]}'),
     fmt.DiffusersFormatError, ['model_index.json', 'UNet2DConditionModel'], 'check_diffusers_configs'),
]
DAMAGED_FILE = {'scheduler': 'scheduler_config.json', 'model-index': 'model_index.json',
                'config': 'config.json', 'unet': 'config.json'}


def damaged_copy(tmp_path, damage, source=GOOGLE):
  folder = str(tmp_path / 'model')
  shutil.copytree(source, folder)
  damage(folder)
  return folder


def _named_file(case_id):
  prefix = case_id.split('-')[0]
  return DAMAGED_FILE.get(prefix, DAMAGED_FILE.get('-'.join(case_id.split('-')[:2]), WEIGHTS))


@pytest.fixture
def real_variables(monkeypatch):
  """Counts the variables created for real (not listed under `nn.shapes_only`)."""
  made = []
  original = nn.variable

  def counting(name, shape, initializer):
    v = original(name, shape, initializer)
    if isinstance(v, tf.Variable):
      made.append(name)
    return v
  monkeypatch.setattr(nn, 'variable', counting)
  return made


@pytest.mark.parametrize('case_id,damage,error,fragments,check', CASES, ids=[c[0] for c in CASES])
def test_a_damaged_folder_is_refused_before_anything_is_built(tmp_path, real_variables, case_id,
                                                              damage, error, fragments, check):
  folder = damaged_copy(tmp_path, damage)
  with pytest.raises(error) as e:
    pipelines.DDPMPipeline.from_pretrained(folder)
  msg = str(e.value)
  assert isinstance(e.value, (UserError, FileNotFoundError)), type(e.value)
  assert isinstance(e.value, ValueError) or error is FileNotFoundError
  for fragment in fragments:
    assert fragment in msg, msg
  assert os.path.join(folder, _named_file(case_id)) in msg, msg
  assert real_variables == [], f'{len(real_variables)} variables built before the refusal'


def test_the_table_has_every_class_of_the_issue():
  checks = {c[4].split()[0] for c in CASES}
  assert {'read_json', 'unet_kwargs_from_config', 'check_header', 'listed_unet',
          'read_safetensors_header', 'check_finite', 'betas_from_scheduler_config',
          'diffusion_from_scheduler_config', 'settings_from_scheduler_config'} <= checks
  assert len(CASES) >= 12


def test_the_same_refusals_in_the_save_pretrained_layout(tmp_path):
  folder = damaged_copy(tmp_path, _edit_json('unet/config.json', block_out_channels=[1600, 3200, 3200]),
                        UNCOND)
  with pytest.raises(fmt.DiffusersFormatError, match='unet/config.json'):
    pipelines.DDIMPipeline.from_pretrained(folder)
  shutil.rmtree(folder)
  folder = damaged_copy(tmp_path, _edit_json('scheduler/scheduler_config.json', beta_start=-1), UNCOND)
  with pytest.raises(fmt.DiffusersFormatError, match='scheduler/scheduler_config.json.*beta_start=-1'):
    pipelines.PNDMPipeline.from_pretrained(folder)


def test_the_good_fixtures_still_load():
  for folder in (GOOGLE, UNCOND):
    assert loading.check_diffusers_folder(folder).parameters == sum(
        int(np.prod(v.shape)) for v in pipelines.DDPMPipeline.from_pretrained(folder).unet.trainable_variables)


# ----------------------------------------------------------------------------- links, .bin

def test_a_link_leading_outside_the_folder_is_a_warning(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  folder = damaged_copy(tmp_path, lambda f: None)
  shutil.move(os.path.join(folder, WEIGHTS), elsewhere / WEIGHTS)
  os.symlink(elsewhere / WEIGHTS, os.path.join(folder, WEIGHTS))
  os.symlink('config.json', os.path.join(folder, 'model_index.json.unused'))  # inside: no warning
  pipelines.DDPMPipeline.from_pretrained(folder)  # loads all the same
  err = capsys.readouterr().err
  assert err.count('WARNING:') == 1, err
  assert f'{os.path.join(folder, WEIGHTS)} is a link to {elsewhere / WEIGHTS}, outside' in err


def test_hub_cache_links_are_no_warning(tmp_path, capsys, monkeypatch):
  cache = tmp_path / 'hf' / 'hub'
  blobs = cache / 'models--google--tiny' / 'blobs'
  snap = cache / 'models--google--tiny' / 'snapshots' / ('0' * 40)
  blobs.mkdir(parents=True)
  snap.mkdir(parents=True)
  for name in os.listdir(GOOGLE):  # as huggingface_hub lays a snapshot out: links into blobs/
    shutil.copy(os.path.join(GOOGLE, name), blobs / name)
    os.symlink(os.path.join('..', '..', 'blobs', name), snap / name)
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  monkeypatch.delenv('HF_HUB_CACHE', raising=False)
  pipelines.DDPMPipeline.from_pretrained(str(snap))
  assert 'WARNING' not in capsys.readouterr().err


def _fake_torch(monkeypatch, load):
  fake = types.ModuleType('torch')
  fake.load = load
  monkeypatch.setitem(sys.modules, 'torch', fake)


def _bin_copy(tmp_path, data=None):
  folder = damaged_copy(tmp_path, lambda f: None)
  path = os.path.join(folder, fmt.WEIGHTS_BIN)
  os.remove(os.path.join(folder, WEIGHTS))
  with open(path, 'wb') as f:
    f.write(data if data is not None else b'PK\x03\x04 not really a zip')
  return folder, path


def test_a_bin_that_does_not_unpickle_is_one_error(tmp_path, monkeypatch):
  def load(path, **kwargs):
    assert kwargs.get('weights_only') is True  # never runs code from the file
    raise pickle.UnpicklingError('Weights only load failed: GLOBAL os.system was not an allowed global')
  _fake_torch(monkeypatch, load)
  folder, path = _bin_copy(tmp_path)
  with pytest.raises(fmt.DiffusersFormatError, match=f'{path} is damaged or not a weights file: '
                                                     f'UnpicklingError: Weights only'):
    pipelines.DDPMPipeline.from_pretrained(folder)


def test_a_bin_far_larger_than_its_config_is_refused_unread(tmp_path, monkeypatch):
  _fake_torch(monkeypatch, lambda *a, **k: pytest.fail('the .bin was read'))
  folder, path = _bin_copy(tmp_path)
  with open(path, 'wb') as f:
    f.truncate(8 * 177_427 + 16 * 2 ** 20 + 1)  # sparse: more than 8 bytes a parameter + 16 MB
  with pytest.raises(fmt.DiffusersFormatError, match=f'{path} holds 18,196,633 bytes, far more'):
    pipelines.DDPMPipeline.from_pretrained(folder)


def test_a_bin_with_other_tensors_is_refused_before_building(tmp_path, monkeypatch, real_variables):
  class Tensor:  # what torch.load gives, as far as we use it
    def __init__(self, a):
      self.a = a

    def float(self):
      return self

    def numpy(self):
      return self.a
  tensors = load_file(os.path.join(GOOGLE, WEIGHTS))
  tensors['conv_in.weight'] = tensors['conv_in.weight'][:8]
  _fake_torch(monkeypatch, lambda *a, **k: {k_: Tensor(v) for k_, v in tensors.items()})
  folder, path = _bin_copy(tmp_path)
  with pytest.raises(fmt.DiffusersFormatError, match='conv_in.weight \\[8, 3, 3, 3\\] vs model'):
    pipelines.DDPMPipeline.from_pretrained(folder)
  assert real_variables == []


# ----------------------------------------------------------------------------- the Hub

def _fake_hub(monkeypatch, repo_folder, listing):
  """huggingface_hub's listing and download replaced: a snapshot folder receives only the files
  asked for; returns the list of each download's files."""
  import huggingface_hub
  calls = []
  snapshot = repo_folder + '-snapshot'

  def snapshot_download(repo_id, *, revision, cache_dir, allow_patterns, local_files_only):
    calls.append(sorted(allow_patterns))
    for name in allow_patterns:
      assert '*' not in name  # exact names only
      src = os.path.join(repo_folder, name)
      if os.path.exists(src):
        os.makedirs(os.path.dirname(os.path.join(snapshot, name)), exist_ok=True)
        shutil.copy(src, os.path.join(snapshot, name))
    os.makedirs(snapshot, exist_ok=True)
    return snapshot
  monkeypatch.setattr(huggingface_hub, 'snapshot_download', snapshot_download)
  monkeypatch.setattr(huggingface_hub.HfApi, 'list_repo_files', lambda self, repo, revision=None: listing)
  monkeypatch.setattr(loading, '_hub_offline', lambda: False)
  return calls


def test_a_hub_id_downloads_only_what_the_pipeline_reads(tmp_path, monkeypatch):
  repo = str(tmp_path / 'repo')
  shutil.copytree(GOOGLE, repo)
  shutil.copy(os.path.join(repo, WEIGHTS), os.path.join(repo, fmt.WEIGHTS_BIN))
  listing = sorted(os.listdir(repo)) + ['README.md', 'samples/0.png', 'other.safetensors']
  calls = _fake_hub(monkeypatch, repo, listing)
  pipe = pipelines.DDPMPipeline.from_pretrained('google/tiny')
  assert pipe.unet.resolution == 8
  assert calls == [['config.json', 'scheduler_config.json'], [WEIGHTS]]  # configs, then weights


def test_a_stable_diffusion_repo_is_refused_after_its_configs(tmp_path, monkeypatch):
  repo = str(tmp_path / 'repo')
  os.makedirs(os.path.join(repo, 'unet'))
  os.makedirs(os.path.join(repo, 'scheduler'))
  with open(os.path.join(repo, 'model_index.json'), 'w') as f:
    json.dump({'_class_name': 'StableDiffusionPipeline', 'unet': ['diffusers', 'UNet2DConditionModel']}, f)
  listing = ['model_index.json', 'unet/config.json', f'unet/{WEIGHTS}', 'unet/diffusion_pytorch_model.bin',
             'vae/config.json', f'vae/{WEIGHTS}', 'text_encoder/model.safetensors',
             'scheduler/scheduler_config.json', 'v1-5-pruned.safetensors']
  calls = _fake_hub(monkeypatch, repo, listing)
  with pytest.raises(fmt.DiffusersFormatError, match='UNet2DConditionModel.*is not supported'):
    pipelines.DDPMPipeline.from_pretrained('someone/stable-diffusion')
  assert calls == [['model_index.json', 'scheduler/scheduler_config.json', 'unet/config.json']]


def test_the_bin_is_chosen_only_without_safetensors_and_with_torch(monkeypatch):
  listing = ['unet/config.json', f'unet/{WEIGHTS}', f'unet/{fmt.WEIGHTS_BIN}']
  assert loading.hub_weight_files(listing) == [f'unet/{WEIGHTS}']
  _fake_torch(monkeypatch, None)
  assert loading.hub_weight_files(listing[::2]) == [f'unet/{fmt.WEIGHTS_BIN}']
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  assert loading.hub_weight_files(listing[::2]) == []


# ----------------------------------------------------------------------------- TF1 checkpoints

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  """A TF1 checkpoint of the authors' layout (raw and EMA names) of a small U-Net."""
  net = unet.UNet(**TINY, out_ch=3, resolution=32)
  return checkpoints.write_tf1_checkpoint(
      str(tmp_path_factory.mktemp('release') / 'model.ckpt'),
      checkpoints.model_var_dict(net, [tf.identity(v) for v in net.trainable_variables]),
      global_step=790000)


def _ckpt_copy(tmp_path, prefix):
  out = tmp_path / 'ckpt'
  shutil.copytree(os.path.dirname(prefix), out)
  return str(out / os.path.basename(prefix))


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def test_a_truncated_tf1_checkpoint_is_one_error(tmp_path, release, real_variables):
  prefix = _ckpt_copy(tmp_path, release)
  _truncate(prefix + '.data-00000-of-00001')
  with pytest.raises(ModelFileError, match=f'{prefix}: the checkpoint is damaged: its data file .* '
                                           f'less than'):
    pipelines.DDPMPipeline.from_pretrained(prefix)
  assert real_variables == []


def test_a_tf1_checkpoint_without_a_unet_is_one_error(tmp_path, real_variables):
  prefix = checkpoints.write_tf1_checkpoint(str(tmp_path / 'c' / 'model.ckpt'),
                                            {'dense/kernel': tf.zeros([3, 3])})
  with pytest.raises(ModelFileError, match=f'{prefix}: no model/conv_in/W in the checkpoint'):
    pipelines.DDPMPipeline.from_pretrained(prefix)
  assert real_variables == []


def test_a_tf1_checkpoint_with_nan_weights_is_refused_naming_them(tmp_path):
  net = unet.UNet(**TINY, out_ch=3, resolution=32)
  net.conv_out.b.assign(tf.fill([3], np.nan))
  prefix = checkpoints.save_tf1_checkpoint(net, str(tmp_path / 'nan'))
  with pytest.raises(ModelFileError, match='NaN or infinite values \\(1\\): model/conv_out/b'):
    pipelines.DDPMPipeline.from_pretrained(prefix)


def test_a_tf1_checkpoint_with_a_flipped_byte_is_one_error(tmp_path, release):
  prefix = _ckpt_copy(tmp_path, release)
  data = prefix + '.data-00000-of-00001'
  with open(data, 'r+b') as f:
    f.seek(os.path.getsize(data) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xff]))
  with pytest.raises(ModelFileError, match=f'{prefix}: the checkpoint is damaged'):
    pipelines.DDPMPipeline.from_pretrained(prefix)


# ----------------------------------------------------------------------------- run directories

@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A run directory of the digits recipe: kwargs.json and a checkpoint (untrained weights)."""
  from diffusion_tf import script_models
  run = tmp_path_factory.mktemp('run')
  recipe = recipes.DIGITS
  model = script_models.build(recipe, loading.image_shape(recipe))
  net = model.net
  checkpoints.write_tf1_checkpoint(str(run / 'model.ckpt'), checkpoints.model_var_dict(
      net, [tf.identity(v) for v in net.trainable_variables]), global_step=1)
  with open(run / 'kwargs.json', 'w') as f:
    json.dump(recipe.defaults('train'), f)
  return str(run)


def _run_copy(tmp_path, run, **kwargs):
  out = str(tmp_path / 'run')
  shutil.copytree(run, out)
  if kwargs:
    _edit_json('kwargs.json', **kwargs)(out)
  return out


def test_the_run_fixture_loads(digits_run):
  assert pipelines.DDPMPipeline.from_pretrained(digits_run).unet.resolution == 16


@pytest.mark.parametrize('change,fragment', [
    (dict(model_name='unet2d16b2'), 'does not match the model'),   # a 35.7M model on 0.85M weights
    (dict(model_name='no_such_model'), 'kwargs.json: '),
    (dict(channels=3), 'shape mismatch'),
])
def test_a_run_whose_kwargs_do_not_fit_its_checkpoint_is_refused_before_building(
    tmp_path, digits_run, real_variables, change, fragment):
  run = _run_copy(tmp_path, digits_run, **change)
  with pytest.raises(ModelFileError, match=fragment):
    pipelines.DDPMPipeline.from_pretrained(run)
  assert real_variables == []


def test_a_run_with_a_damaged_kwargs_json_is_one_error(tmp_path, digits_run):
  run = _run_copy(tmp_path, digits_run)
  _write('kwargs.json', '{"model_name": ')(run)
  with pytest.raises(ModelFileError, match=f'{run}/kwargs.json is not valid JSON'):
    pipelines.DDPMPipeline.from_pretrained(run)


# ----------------------------------------------------------------------------- inspect

def test_inspect_describes_without_building(real_variables, digits_run, release):
  report = loading.inspect_model(UNCOND)
  assert report['parameters'] == 280_755 and report['dtypes'] == ('F32',)
  assert report['model'] == 'UNet2DModel in a DDPMPipeline'
  assert report['scheduler'].startswith('DDPMScheduler: 1000 steps, linear 0.0001..0.02')
  text = loading.format_report(report)
  assert 'parameters: 280,755' in text and 'bytes: 1,141,212' in text
  run = loading.inspect_model(digits_run)
  assert run['config']['model_name'] == recipes.DIGITS.model.model_name
  assert run['dtypes'] == ('float32',)
  tf1 = loading.inspect_model(release)
  assert tf1['config']['ch'] == 32 and tf1['scheduler'].endswith('variance_type fixed_large')
  assert real_variables == []


def test_inspect_refuses_as_loading_does(tmp_path):
  folder = damaged_copy(tmp_path, CASES[7][1])  # 1000x larger than its weights
  with pytest.raises(fmt.DiffusersFormatError, match='173,827,600,003 parameters'):
    loading.inspect_model(folder)


# ----------------------------------------------------------------------------- the scripts

# Runs argv[2:] and writes its peak RSS (KB) to argv[1]. A small process of its own: a child
# forked from pytest would count pytest's memory in its peak (Linux keeps the high-water mark
# across fork and exec), this one's children start from a few MB.
MEASURE = ('import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); '
           'open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); '
           'sys.exit(code)')


def _run_measured(args, cwd):
  """(exit status, stdout, stderr, peak RSS in MB) of a subprocess."""
  peak = os.path.join(cwd, '..', 'peak_kb')
  p = subprocess.run([sys.executable, '-c', MEASURE, peak, *args], cwd=cwd, capture_output=True,
                     text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  with open(peak) as f:
    return p.returncode, p.stdout, p.stderr, int(f.read()) / 1024


SCRIPT = os.path.join(ROOT, 'scripts', 'run_cifar.py')
DIGITS_SCRIPT = os.path.join(ROOT, 'scripts', 'run_digits.py')


@pytest.mark.slow
def test_the_scripts_refuse_in_one_line_in_bounded_memory(tmp_path):
  """Four of the table's folders through ``sample`` and ``inspect`` in subprocesses: exit 2, one
  ``error:`` line naming the file, no traceback, nothing written, peak memory within 300 MB of
  a bare ``import diffusion_tf``."""
  work = tmp_path / 'work'
  work.mkdir()
  _, _, _, bare = _run_measured([sys.executable, '-c', 'import diffusion_tf'], str(work))
  picked = [c for c in CASES if c[0] in ('config-not-json', 'unet-1000x-larger-than-weights',
                                         'weights-truncated', 'scheduler-negative-timesteps')]
  peaks = []
  for i, (case_id, damage, _, fragments, _) in enumerate(picked):
    folder = damaged_copy(tmp_path / str(i), damage)
    for command in ('sample', 'inspect'):
      out = tmp_path / 'out' / case_id
      extra = ['--out', str(out)] if command == 'sample' else []
      code, stdout, stderr, peak = _run_measured(
          [sys.executable, SCRIPT, command, '--pretrained', folder, *extra], str(work))
      lines = [l for l in stderr.splitlines() if l.startswith('error:')]
      assert code == 2, stderr
      assert len(lines) == 1 and 'Traceback' not in stderr, stderr
      assert os.path.join(folder, _named_file(case_id)) in lines[0] and fragments[0] in lines[0]
      assert not (tmp_path / 'out').exists() and os.listdir(work) == []
      peaks.append(peak)
  print(f'bare import {bare:.0f} MB; refusing {min(peaks):.0f}..{max(peaks):.0f} MB')
  assert max(peaks) - bare < 300, (bare, peaks)


@pytest.mark.slow
def test_the_scripts_refuse_a_damaged_checkpoint_and_run_in_one_line(tmp_path, release, digits_run):
  work = tmp_path / 'work'
  work.mkdir()
  prefix = _ckpt_copy(tmp_path, release)
  _truncate(prefix + '.data-00000-of-00001')
  run = _run_copy(tmp_path, digits_run, model_name='unet2d16b2')
  for args in (['inspect', '--ckpt', prefix], ['sample', '--pretrained', prefix, '--out', 'x'],
               ['inspect', '--model_dir', run], ['sample', '--model_dir', run, '--out', 'x']):
    script = DIGITS_SCRIPT if '--model_dir' in args else SCRIPT
    code, _, stderr, _ = _run_measured([sys.executable, script, *args], str(work))
    lines = [l for l in stderr.splitlines() if l.startswith('error:')]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in stderr, stderr
    assert (prefix if '--ckpt' in args or prefix in args else run) in lines[0]
    assert os.listdir(work) == []


@pytest.mark.slow
def test_inspect_command_prints_the_model(tmp_path):
  code, stdout, stderr, _ = _run_measured([sys.executable, SCRIPT, 'inspect', '--pretrained', UNCOND],
                                          str(tmp_path))
  assert code == 0, stderr
  assert 'parameters: 280,755' in stdout and 'dtypes: F32' in stdout
  assert stdout.strip().splitlines()[-1].startswith(f'Inspected {UNCOND}: 280,755 parameters')
