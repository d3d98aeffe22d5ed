"""The editing commands (inpaint, img2img, interpolate) as users run them: refusals before any
work (fast), and each command on a tiny digits run trained here (slow)."""

import numpy as np
import pytest

from diffusion_tf import cli
from diffusion_tf.recipes import DIGITS

COMMANDS = dict(zip(('train', 'inpaint', 'img2img', 'interpolate'),
                    cli.script_commands(DIGITS, 'train', 'inpaint', 'img2img', 'interpolate')))


def run(capsys, *argv, ok=True):
  """cli.main in-process; (stdout lines, stderr)."""
  if ok:
    cli.main(COMMANDS, list(map(str, argv)))
  else:
    with pytest.raises(SystemExit) as e:
      cli.main(COMMANDS, list(map(str, argv)))
    assert e.value.code == cli.USER_ERROR_STATUS
  out = capsys.readouterr()
  return [line for line in out.out.splitlines() if line.strip()], out.err


@pytest.fixture
def files(tmp_path):
  images = np.random.RandomState(0).randint(0, 256, (3, 8, 8, 1)).astype(np.uint8)
  mask = np.full((1, 8, 8, 1), 255, np.uint8)
  mask[:, 4:] = 0
  paths = {'images': tmp_path / 'in.npz', 'mask': tmp_path / 'mask.npz',
           'mask16': tmp_path / 'mask16.npz'}
  np.savez(paths['images'], images=images)
  np.savez(paths['mask'], arr_0=mask)
  np.savez(paths['mask16'], arr_0=np.zeros((1, 16, 16, 1), np.uint8))
  return paths, images, mask


@pytest.mark.parametrize('argv,message', [
    (['inpaint', '--model_dir', 'nowhere', '--images', '{images}', '--masks', '{mask16}'],
     'same size'),
    (['inpaint', '--model_dir', 'nowhere', '--masks', '{mask}'], '--images is required'),
    (['img2img', '--model_dir', 'nowhere', '--images', '{images}', '--strength', '1.5'], '--strength'),
    (['interpolate', '--model_dir', 'nowhere', '--images', '{images}', '--t', '-1'], '--t'),
    (['inpaint', '--model_dir', 'nowhere', '--images', '{images}', '--masks', '{mask}',
      '--method', 'blend'], '--method'),
])
def test_refusals_before_any_work(files, capsys, tmp_path, argv, message):
  paths = files[0]
  argv = [a.format(**paths) for a in argv] + ['--out', tmp_path / 'out']
  _, err = run(capsys, *argv, ok=False)
  assert message in err and not (tmp_path / 'out.npz').exists()


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  log_dir = tmp_path_factory.mktemp('edit_run')
  COMMANDS['train'](resolution=8, num_diffusion_timesteps=10, max_steps=2, total_bs=4,
                    log_dir=str(log_dir), num_sample_images=0)
  (run_dir,) = (log_dir / '9999-99-99').iterdir()
  return run_dir


@pytest.mark.slow
def test_the_three_commands_on_a_digits_run(tiny_run, files, capsys, tmp_path):
  paths, images, mask = files
  out = tmp_path / 'filled'
  lines, _ = run(capsys, 'inpaint', '--model_dir', tiny_run, '--images', paths['images'], '--masks',
                 paths['mask'], '--steps', 5, '--jump_length', 2, '--jump_n_sample', 2, '--out', out,
                 '--batch_size', 2)
  assert 'Inpainted 3 images' in lines[-1] and '96 of 192 pixels repainted' in lines[-1]
  with np.load(f'{out}.npz') as z:
    filled = z['samples']
  keep = np.broadcast_to(mask > 0, images.shape)
  np.testing.assert_array_equal(filled[keep], images[keep])
  lines, _ = run(capsys, 'inpaint', '--model_dir', tiny_run, '--images', paths['images'], '--masks',
                 paths['mask'], '--method', 'replace', '--sampler', 'ddim', '--steps', 5,
                 '--invert_mask', '--out', tmp_path / 'replaced')
  assert 'replacement on ddim' in lines[-1]
  lines, _ = run(capsys, 'img2img', '--model_dir', tiny_run, '--images', paths['images'],
                 '--strength', 0, '--out', tmp_path / 'same')
  with np.load(tmp_path / 'same.npz') as z:
    np.testing.assert_array_equal(z['samples'], images)
  run(capsys, 'img2img', '--model_dir', tiny_run, '--images', paths['images'], '--strength', .6,
      '--sampler', 'unipc', '--steps', 5, '--out', tmp_path / 'edited')
  np.savez(tmp_path / 'pair.npz', images=images[:2])
  lines, _ = run(capsys, 'interpolate', '--model_dir', tiny_run, '--images', tmp_path / 'pair.npz',
                 '--t', 5, '--num', 4, '--out', tmp_path / 'morph')
  assert lines[-1].startswith('Interpolated 1 pairs at t=5')
  with np.load(tmp_path / 'morph.npz') as z:
    assert z['samples'].shape == (4, 8, 8, 1)
  # Refusals that need the model: t beyond its 10 steps, another resolution without --resize.
  _, err = run(capsys, 'interpolate', '--model_dir', tiny_run, '--images', tmp_path / 'pair.npz',
               '--t', 10, ok=False)
  assert '--t must be an integer in [0, 10)' in err
  np.savez(tmp_path / 'big.npz', images=np.zeros((2, 16, 16, 1), np.uint8))
  _, err = run(capsys, 'img2img', '--model_dir', tiny_run, '--images', tmp_path / 'big.npz',
               ok=False)
  assert '--resize' in err
  run(capsys, 'img2img', '--model_dir', tiny_run, '--images', tmp_path / 'big.npz', '--resize',
      '--strength', .2, '--out', tmp_path / 'resized')
