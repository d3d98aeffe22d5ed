"""The diffusers format: configs and weights of UNet2DModels that diffusers wrote
(tests/fixtures/diffusers, made by make_diffusers_fixtures.py) load into our UNet and give
diffusers' outputs; what we write is what diffusers writes; refusals."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from diffusion_tf import checkpoints, diffusers_format as fmt, pipelines
from diffusion_tf.diffusion_utils_2 import GaussianDiffusion2
from diffusion_tf.models import unet
from test_unet import expected_variables, randomize

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'diffusers')
GOOGLE = os.path.join(FIXTURES, 'google')  # flat layout, old attention names, one head
UNCOND = os.path.join(FIXTURES, 'uncond')  # DDPMPipeline.save_pretrained, multi-head


@pytest.fixture(scope='module')
def ref():
  return dict(np.load(os.path.join(FIXTURES, 'reference.npz')))


def out_tolerance(expected):
  # float32 convolutions/matmuls summed in another order (and Winograd's ~1e-5 relative
  # rounding) over ~20 layers with GroupNorm renormalising in between: 1e-4 of the scale.
  return 1e-4 * float(np.abs(expected).max())


@pytest.mark.parametrize('tag,folder', [('google', GOOGLE), ('uncond', UNCOND)])
def test_fixture_network_outputs_match_diffusers(ref, tag, folder):
  net, _ = pipelines.load_diffusers_folder(folder)
  out = net(tf.constant(ref[f'{tag}_x']), tf.constant(ref[f'{tag}_t'], tf.int32)).numpy()
  expected = ref[f'{tag}_out']
  np.testing.assert_allclose(out, expected, rtol=0, atol=out_tolerance(expected))


def test_fixture_configs_map_to_our_options():
  google = pipelines.load_diffusers_folder(GOOGLE)[0]
  assert (google.attn_head_dim, google.downsample_padding, google.flip_sin_to_cos,
          google.freq_shift, google.norm) == (None, 0, False, 1, dict(num_groups=8, eps=1e-6))
  uncond = pipelines.load_diffusers_folder(UNCOND)[0]
  assert (uncond.attn_head_dim, uncond.downsample_padding, uncond.flip_sin_to_cos,
          uncond.freq_shift, uncond.norm) == (8, 1, True, 0, dict(num_groups=8, eps=1e-5))
  assert uncond.mid_attn_1.num_heads == 4 and len(uncond.down[1]['attns']) == 1
  assert not uncond.down[0]['attns'] and not uncond.up[0]['attns'] and uncond.up[1]['attns']


def test_written_config_keys_and_shapes_equal_what_diffusers_writes():
  net, _ = pipelines.load_diffusers_folder(UNCOND)
  theirs = fmt.read_json(os.path.join(UNCOND, 'unet', 'config.json'))
  ours = fmt.unet_config(net)
  drop = lambda c: {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()
                    if k != '_diffusers_version'}
  assert drop(ours) == drop(theirs)
  written = fmt.state_dict(net)
  listing = load_file(os.path.join(UNCOND, 'unet', fmt.WEIGHTS_SAFETENSORS))
  assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in listing.items()}
  # The weights go back to diffusers' layout exactly.
  for k, v in listing.items():
    np.testing.assert_array_equal(written[k], v, err_msg=k)


def test_old_attention_names_are_read_and_written_as_current_ones():
  old = load_file(os.path.join(GOOGLE, fmt.WEIGHTS_SAFETENSORS))
  assert any('.query.' in k for k in old) and not any('.to_q.' in k for k in old)
  net, _ = pipelines.load_diffusers_folder(GOOGLE)
  written = fmt.state_dict(net)
  assert set(written) == set(fmt.modernise_keys(old))
  for k, v in fmt.modernise_keys(old).items():
    np.testing.assert_array_equal(written[k], v, err_msg=k)


def test_save_pretrained_round_trip_is_exact(tmp_path):
  pipe = pipelines.DDPMPipeline.from_pretrained(GOOGLE)
  out = pipe.save_pretrained(str(tmp_path / 'saved'))
  assert sorted(os.listdir(out)) == ['model_index.json', 'scheduler', 'unet']
  index = fmt.read_json(os.path.join(out, 'model_index.json'))
  assert index['_class_name'] == 'DDPMPipeline' and index['unet'] == ['diffusers', 'UNet2DModel']
  again = pipelines.DDPMPipeline.from_pretrained(out)
  for a, b in zip(pipe.unet.trainable_variables, again.unet.trainable_variables):
    assert unet.tf1_name(a) == unet.tf1_name(b)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert again.scheduler_config == pipe.scheduler_config
  np.testing.assert_array_equal(again.diffusion.betas, pipe.diffusion.betas)
  with pytest.raises(FileExistsError, match='already holds a model'):
    pipe.save_pretrained(out)


# ----------------------------------------------------------------------------- TF1 checkpoints

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


def test_tf1_checkpoint_to_pipeline_to_diffusers_folder_and_back(tmp_path):
  net = unet.UNet(**TINY, out_ch=3, resolution=32)
  randomize(net, 0)
  shadows = [tf.Variable(v + 0.01) for v in net.trainable_variables]
  prefix = checkpoints.write_tf1_checkpoint(str(tmp_path / 'release' / 'model.ckpt'),
                                            checkpoints.model_var_dict(net, shadows),
                                            global_step=790000)
  pipe = pipelines.DDPMPipeline.from_pretrained(prefix)
  assert (pipe.unet.ch, pipe.unet.ch_mult, pipe.unet.attn_resolutions, pipe.unet.resolution) == (
      32, (1, 2), (16,), 32)
  for s, v in zip(shadows, pipe.unet.trainable_variables):  # EMA weights by default
    np.testing.assert_array_equal(s.numpy(), v.numpy())
  assert pipe.scheduler_config['variance_type'] == 'fixed_large'  # the CIFAR-10 release
  folder = pipe.save_pretrained(str(tmp_path / 'hub'))
  again = pipelines.DDPMPipeline.from_pretrained(folder)
  x = tf.random.stateless_normal([2, 32, 32, 3], [1, 2])
  t = tf.constant([0, 999])
  np.testing.assert_array_equal(pipe.unet(x, t).numpy(), again.unet(x, t).numpy())
  # ...and back to a TF1 checkpoint with the same names.
  back = checkpoints.write_tf1_checkpoint(str(tmp_path / 'back' / 'model.ckpt'),
                                          checkpoints.model_var_dict(again.unet))
  raw = pipelines.DDPMPipeline.from_pretrained(back, ema=False)
  np.testing.assert_array_equal(pipe.unet(x, t).numpy(), raw.unet(x, t).numpy())


@pytest.mark.parametrize('name,resolution', [('unet2d16b2', 32), ('unet2d16b2c112244', 256)])
def test_config_from_released_shapes(name, resolution):
  shapes = expected_variables(**unet.MODEL_CONFIGS[name], resolution=resolution)
  shapes.update({checkpoints.ema_name(k): v for k, v in shapes.items()})
  kwargs = pipelines.unet_kwargs_from_tf1_shapes(shapes)
  assert kwargs.pop('resolution') == resolution
  assert pipelines.model_config_name(kwargs) == name
  assert {k: kwargs[k] for k in unet.MODEL_CONFIGS[name]} == unet.MODEL_CONFIGS[name]


# ----------------------------------------------------------------------------- refusals

def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


@pytest.mark.parametrize('option,value', [('resnet_time_scale_shift', 'scale_shift'),
                                          ('time_embedding_type', 'fourier'),
                                          ('class_embed_type', 'timestep'),
                                          ('down_block_types', ['DownBlock2D', 'CrossAttnDownBlock2D'])])
def test_unsupported_unet_options_are_refused_by_name(tmp_path, option, value):
  folder = _copy(GOOGLE, tmp_path / 'm')
  config = fmt.read_json(os.path.join(folder, 'config.json'))
  config[option] = value
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(fmt.DiffusersFormatError, match=option):
    pipelines.load_diffusers_folder(folder)


@pytest.mark.parametrize('option,value', [('prediction_type', 'v_prediction'),
                                          ('variance_type', 'learned_range'),
                                          ('beta_schedule', 'sigmoid'), ('thresholding', True),
                                          ('clip_sample_range', 2.0)])
def test_unsupported_scheduler_options_are_refused_by_name(option, value):
  config = dict(fmt.read_json(os.path.join(GOOGLE, 'scheduler_config.json')), **{option: value})
  with pytest.raises(fmt.DiffusersFormatError, match=f'{option}={value!r}'):
    fmt.diffusion_from_scheduler_config(config)


def test_scheduler_schedules_and_types():
  base = {'_class_name': 'DDPMScheduler', 'num_train_timesteps': 10, 'beta_start': 0.01,
          'beta_end': 0.2}
  d, _ = fmt.diffusion_from_scheduler_config(dict(base, beta_schedule='scaled_linear',
                                                  prediction_type='sample'))
  np.testing.assert_allclose(d.betas, np.linspace(0.1, 0.2 ** 0.5, 10) ** 2, rtol=1e-15)
  assert (d.model_mean_type, d.model_var_type) == ('xstart', 'fixedsmall')
  d, _ = fmt.diffusion_from_scheduler_config(dict(base, beta_schedule='squaredcos_cap_v2'))
  ab = np.cos((np.arange(11) / 10 + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(d.betas, np.minimum(1 - ab[1:] / ab[:-1], 0.999), rtol=1e-12)
  trained = np.linspace(0.01, 0.3, 10) ** 1.5
  d, cfg = fmt.diffusion_from_scheduler_config(dict(base, trained_betas=trained.tolist()))
  np.testing.assert_array_equal(d.betas, trained)
  # and back: our tables come back exactly (trained_betas when no named schedule fits).
  for betas in (trained, np.linspace(0.01, 0.2, 10)):
    d = GaussianDiffusion2(betas=betas, model_mean_type='eps', model_var_type='fixedlarge',
                           loss_type='mse')
    back, _ = fmt.diffusion_from_scheduler_config(fmt.scheduler_config(d))
    np.testing.assert_array_equal(back.betas, betas)
    assert back.model_var_type == 'fixedlarge'


def test_misshaped_missing_and_unexpected_tensors_are_listed(tmp_path):
  folder = _copy(GOOGLE, tmp_path / 'm')
  path = os.path.join(folder, fmt.WEIGHTS_SAFETENSORS)
  tensors = load_file(path)
  tensors['conv_in.weight'] = tensors['conv_in.weight'][:, :, :2]
  del tensors['conv_out.bias']
  tensors['extra.weight'] = np.zeros(3, np.float32)
  save_file(tensors, path)
  with pytest.raises(fmt.DiffusersFormatError) as e:
    pipelines.load_diffusers_folder(folder)
  msg = str(e.value)
  assert 'conv_in.weight [16, 3, 2, 3] vs model [16, 3, 3, 3]' in msg
  assert 'missing (1): conv_out.bias' in msg and 'unexpected (1): extra.weight' in msg


def test_bin_weights_without_torch_say_how_to_get_safetensors(tmp_path, monkeypatch):
  folder = _copy(GOOGLE, tmp_path / 'm')
  os.rename(os.path.join(folder, fmt.WEIGHTS_SAFETENSORS), os.path.join(folder, fmt.WEIGHTS_BIN))
  monkeypatch.setitem(__import__('sys').modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(fmt.DiffusersFormatError, match='needs torch.*safetensors'):
    pipelines.load_diffusers_folder(folder)


def test_hub_id_offline_fails_at_once_naming_repo_cache_and_command(tmp_path, monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  monkeypatch.delenv('HF_HUB_CACHE', raising=False)
  with pytest.raises(FileNotFoundError) as e:
    pipelines.DDPMPipeline.from_pretrained('google/ddpm-cifar10-32')
  msg = str(e.value)
  assert "'google/ddpm-cifar10-32'" in msg and str(tmp_path / 'hf' / 'hub') in msg
  assert 'huggingface-cli download google/ddpm-cifar10-32' in msg


def test_hub_id_from_the_cache(tmp_path, monkeypatch):
  """A snapshot already in the HF cache (as `huggingface-cli download` leaves it) loads offline."""
  cache = tmp_path / 'hf' / 'hub'
  snap = cache / 'models--google--tiny' / 'snapshots' / ('0' * 40)
  shutil.copytree(GOOGLE, snap)
  (cache / 'models--google--tiny' / 'refs').mkdir()
  (cache / 'models--google--tiny' / 'refs' / 'main').write_text('0' * 40)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  monkeypatch.delenv('HF_HUB_CACHE', raising=False)
  pipe = pipelines.DDPMPipeline.from_pretrained('google/tiny')
  assert pipe.unet.resolution == 8


# ----------------------------------------------------------------------------- no resampling convolutions

@pytest.mark.parametrize('padding', [0, 1])
def test_a_unet_without_resampling_convolutions_goes_to_diffusers_and_back(padding, tmp_path):
  """The digits models pool and repeat pixels where diffusers' blocks convolve: the written
  convolutions compute the same, so the folder samples as the run does, and only those
  weights load back into the pooling U-Net."""
  net = unet.UNet(**dict(unet.MODEL_CONFIGS['unet_digits_lite'], out_ch=1, downsample_padding=padding),
                  in_ch=1, resolution=16)
  randomize(net, seed=3)
  tensors = fmt.state_dict(net)
  assert tensors['down_blocks.0.downsamplers.0.conv.weight'].shape == (16, 16, 3, 3)
  back = unet.UNet(**fmt.unet_kwargs_from_config(fmt.unet_config(net)))
  assert back.resamp_with_conv
  fmt.load_state_dict(back, tensors)
  x = tf.random.stateless_normal([2, 16, 16, 1], seed=[1, 2])
  t = tf.constant([10, 900])
  np.testing.assert_allclose(back(x, t).numpy(), net(x, t).numpy(), rtol=0, atol=1e-5)
  fmt.load_state_dict(net, tensors)  # the same values are accepted
  tensors['up_blocks.1.upsamplers.0.conv.weight'] += 0.01
  with pytest.raises(fmt.DiffusersFormatError, match='resamples without a convolution'):
    fmt.load_state_dict(net, tensors)


def test_pooling_over_an_odd_size_has_no_diffusers_counterpart():
  net = unet.UNet(**dict(unet.MODEL_CONFIGS['unet_digits_lite'], out_ch=1), in_ch=1, resolution=10)
  with pytest.raises(fmt.DiffusersFormatError, match='odd size'):
    fmt.unet_config(net)
