"""The digits feature network (FID / IS for the built-in data set) and the shared channel
handling of every feature extractor."""

import os
import subprocess
import sys

import numpy as np
import pytest

from diffusion_tf.metrics import digits_features, inception, reference_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _labels_held_out():
  from sklearn.datasets import load_digits
  return load_digits().target[-digits_features.HELD_OUT:]


def test_shipped_network_recognises_held_out_digits():
  ext = digits_features.load_extractor()
  acc = np.mean(ext.predict(digits_features.real_digits('held_out')) == _labels_held_out())
  assert acc > 0.93, acc  # 0.967 when made; chance is 0.1
  assert os.path.getsize(digits_features.WEIGHTS) < 64 * 1024


@pytest.mark.parametrize('make', [
    lambda x: x,                                              # grey
    lambda x: np.repeat(x, 3, axis=-1),                       # RGB digits model
    lambda x: x.astype(np.float32),                           # float samples
])
def test_features_do_not_depend_on_channels_or_dtype(make):
  ext = digits_features.load_extractor()
  grey = digits_features.real_digits('held_out')[:20]
  want = ext(grey)
  got = ext(make(grey))
  for k in ('pool_3', 'logits'):
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-5)
  assert np.asarray(want['pool_3']).shape == (20, ext.feature_dim)
  assert np.asarray(want['logits']).shape == (20, 10)


def test_other_resolutions_are_resized_to_the_network():
  ext = digits_features.load_extractor()
  x32 = digits_features.real_digits('held_out', resolution=32, channels=3)
  acc = np.mean(ext.predict(x32) == _labels_held_out())
  assert acc > 0.9, acc


def test_frechet_distance_orders_real_samples_noise():
  rng = np.random.RandomState(0)
  held_out = digits_features.real_digits('held_out')
  noise = rng.randint(0, 256, held_out.shape).astype(np.uint8)
  fd_real = digits_features.frechet_distance(held_out)
  fd_noise = digits_features.frechet_distance(noise)
  assert 0 < fd_real < fd_noise / 5, (fd_real, fd_noise)
  # The same number through the generic reference-statistics path (one FID implementation).
  ext = digits_features.load_extractor()
  stats = reference_stats.compute_reference_stats(digits_features.real_digits('train'), ext,
                                                  batch_size=100)
  assert digits_features.frechet_distance(held_out, reference=stats) == pytest.approx(fd_real,
                                                                                    rel=1e-6)


def test_frechet_distance_rejects_non_uint8():
  with pytest.raises(ValueError, match='uint8'):
    digits_features.frechet_distance(np.zeros((4, 16, 16, 1), np.float32))


def test_name_follows_the_weights(tmp_path):
  ext = digits_features.load_extractor()
  assert ext.name.startswith('digits_cnn_')
  params = {k: np.asarray(v) for k, v in ext.params.items()}
  params['logits_b'] = params['logits_b'] + 1.
  path = str(tmp_path / 'w.npz')
  digits_features.save_params(path, params)
  assert digits_features.load_extractor(path).name != ext.name


@pytest.mark.slow
def test_make_script_writes_loadable_weights(tmp_path):
  out = str(tmp_path / 'w.npz')
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'make_digits_features.py'),
                         '--out', out, '--epochs', '2'], capture_output=True, text=True,
                        timeout=300, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'held-out accuracy' in proc.stdout
  ext = digits_features.load_extractor(out)
  assert np.mean(ext.predict(digits_features.real_digits('held_out')) == _labels_held_out()) > 0.5


@pytest.mark.parametrize('channels', [1, 3])
def test_random_projection_extractor_accepts_grey_and_rgb(channels):
  # The crash of issue 17: grey samples reached an extractor compiled for three channels.
  ext = inception.make_random_projection_extractor(dim=16)
  grey = digits_features.real_digits('held_out')[:8]
  out = ext(np.repeat(grey, channels, axis=-1))
  np.testing.assert_allclose(np.asarray(out['pool_3']),
                             np.asarray(ext(np.repeat(grey, 3, axis=-1))['pool_3']), rtol=1e-6)


def test_channel_conversion_rejects_other_channel_counts():
  with pytest.raises(ValueError, match='C = 1'):
    inception.as_network_input(np.zeros((2, 8, 8, 4), np.uint8))
