"""How well does the digits model fill holes? (issue 25, small version)

    python benchmarks/inpaint_quality.py RUN_DIR [--num 50] [--picture resources/inpaint_digits.png]

The first ``num`` of the held-out digits (the last 180, which the model never trained on) get
their lower half (and, separately, a random half of their 4x4 blocks) masked; each is filled by
RePaint (250 steps, jumps 10 x 10, eta 0 and 1) and by replacement on the strided ancestral
sampler (250 steps) and on DDIM (50 steps). The score is the share whose label, as read by the
digit classifier of `metrics.digits_classifier` (an SVM fitted on the model's training digits), is the
original's; against the originals, the input with the hole filled grey and the hole filled
from fresh unconditional samples. Network evaluations and CPU seconds per image for each; then
img2img's share against strength. Prints Markdown tables and writes a picture (inputs, masked,
RePaint) if asked.
"""

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_tf import editing, loading, sampling, utils  # noqa: E402
from diffusion_tf.metrics import digits_classifier  # noqa: E402
from diffusion_tf.recipes import DIGITS  # noqa: E402
from diffusion_tf.tpu_utils import datasets  # noqa: E402


def training_digits(resolution):
  """The digits the model trained on (all but the last 180) and their labels."""
  from sklearn.datasets import load_digits
  n = datasets.DIGITS_NUM_EVAL
  return datasets.load_digits_array(resolution, 1)[:-n], load_digits().target[:-n]


@functools.lru_cache(maxsize=2)
def classifier(resolution):
  """The SVM of `metrics.digits_classifier` fitted on the training digits only, so that it
  has never seen the held-out digits it reads (fitted on all 1,797 it would have memorised
  them: 99% of the originals read right against 97%)."""
  images, labels = training_digits(resolution)
  return digits_classifier.fit_svm(digits_classifier._features(images), labels)


def labels_read(images):
  return digits_classifier.classify(classifier(images.shape[1]), digits_classifier._features(images))[0]


def kept_half_alone(images, truth):
  """What the kept upper half says by itself: the share an SVM fitted on the training digits'
  upper halves reads right (its best guess), and the share a perfect single fill would get,
  estimated as the mean probability of the true label under that SVM's calibrated
  (Platt) probabilities: a fill drawn from the data's own conditional keeps the label with
  that probability."""
  train, labels = training_digits(images.shape[1])
  upper = lambda a: digits_classifier._features(a[:, :a.shape[1] // 2])
  svm = digits_classifier.fit_svm(upper(train), labels, probability=True, random_state=0)
  p = svm.predict_proba(upper(images))
  best = svm.classes_[p.argmax(axis=1)]
  return np.mean(best == truth), np.mean(p[np.arange(len(truth)), np.searchsorted(svm.classes_, truth)])


def methods(model):
  d = model.diffusion

  def repaint(eta):
    return (lambda noise_fn, x0, m: editing.repaint_loop(d, model.denoise, x0=x0, mask=m, steps=250,
                                                          eta=eta, noise_fn=noise_fn),
            editing.repaint_evaluations(d.num_timesteps, 250))

  def replace(name, steps, eta=0.):
    s = sampling.SamplerSettings.resolve(name, d.num_timesteps, steps=steps, eta=eta)
    return (lambda noise_fn, x0, m: editing.replace_loop(s, d, model.denoise, x0=x0, mask=m,
                                                         noise_fn=noise_fn), s.num_evaluations)

  return {'RePaint 250 steps, 10 x 10, eta 0': repaint(0.), 'RePaint 250 steps, 10 x 10, eta 1': repaint(1.),
          'replacement, ddpm 250 steps': replace('ddpm', 250),
          'replacement, ddim 50 steps, eta 0': replace('ddim', 50)}


def masks_of(kind, shape, rng):
  """uint8 [N, H, W, 1] masks (1 keep): the lower half, or a random half of the 4x4 blocks."""
  masks = np.ones(shape[:3] + (1,), np.uint8)
  if kind == 'lower half':
    masks[:, shape[1] // 2:] = 0
    return masks
  n, bh, bw = shape[0], shape[1] // 4, shape[2] // 4
  for i in range(n):
    hole = rng.permutation(bh * bw)[:bh * bw // 2]
    for b in hole:
      masks[i, 4 * (b // bw):4 * (b // bw) + 4, 4 * (b % bw):4 * (b % bw) + 4] = 0
  return masks


def score(name, result, truth, evals=0, cpu=0.):
  share = np.mean(labels_read(result) == truth)
  print(f'| {name} | {100 * share:.0f}% | {evals or "-"} | {f"{cpu:.2f}" if evals else "-"} |',
        flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('run_dir')
  ap.add_argument('--num', type=int, default=50)
  ap.add_argument('--picture', default=None)
  ap.add_argument('--masks', default='lower half,4x4 blocks')
  ap.add_argument('--methods', default='RePaint,replacement',
                  help='the fills to run: names starting with these (comma-separated)')
  ap.add_argument('--no_img2img', action='store_true')
  args = ap.parse_args()
  model = loading.load_for_sampling(DIGITS, model_dir=args.run_dir)[0]
  from sklearn.datasets import load_digits
  images = datasets.load_digits_array(16, 1)[-datasets.DIGITS_NUM_EVAL:][:args.num]
  truth = load_digits().target[-datasets.DIGITS_NUM_EVAL:][:args.num]
  x0 = images.astype(np.float32) / 127.5 - 1.
  fresh = utils.to_uint8(sampling.generate_samples(model, len(images), 50, sampler='ddim', steps=50,
                                                   seed=1, log_fn=None))
  for kind in args.masks.split(','):
    masks = masks_of(kind, images.shape, np.random.RandomState(0))
    grey = np.where(masks > 0, images, 128).astype(np.uint8)
    print(f'\n| {kind} of {len(images)} held-out digits | label kept | network evaluations / image '
          f'| CPU s / image |\n|---|---|---|---|', flush=True)
    score('original images', images, truth)
    score('hole filled grey', grey, truth)
    if kind == 'lower half':
      best, perfect = kept_half_alone(images, truth)
      print(f'| the upper half alone, best guess (an SVM fitted on upper halves) | {100 * best:.0f}% | - | - |\n'
            f'| a perfect single fill (estimated: the mean probability of the true label given the '
            f'upper half) | {100 * perfect:.0f}% | - | - |', flush=True)
    score('hole filled from fresh samples (ddim 50)', editing.compose(fresh, images, masks), truth)
    chosen = [(n, m) for n, m in methods(model).items() if n.startswith(tuple(args.methods.split(',')))]
    for i, (name, (edit, evals)) in enumerate(chosen):
      t0 = time.process_time()
      out = editing.EditRunner(edit)([x0, masks.astype(np.float32)], 50, 0, desc=name, progress=False)
      result = editing.compose(utils.to_uint8(out), images, masks)
      score(name, result, truth, evals, (time.process_time() - t0) / len(images))
      if i == 0 and args.picture and kind == 'lower half' and name.startswith('RePaint'):
        picture(args.picture, images, grey, result)
  if not args.no_img2img:
    img2img_table(model, images, x0, truth)


def img2img_table(model, images, x0, truth):
  s = sampling.SamplerSettings.resolve('ddim', model.diffusion.num_timesteps, steps=50)
  print(f'\n| img2img (ddim 50) of {len(images)} held-out digits, strength | label kept |\n|---|---|',
        flush=True)
  for strength in (0.2, 0.4, 0.6, 0.8, 1.0):
    out = editing.EditRunner(lambda noise_fn, x: editing.img2img(
        s, model.diffusion, model.denoise, x0=x, strength=strength, noise_fn=noise_fn))(
        [x0], 50, 0, progress=False)
    print(f'| {strength} | {100 * np.mean(labels_read(utils.to_uint8(out)) == truth):.0f}% |', flush=True)


def picture(path, images, grey, result, n=10):
  grid = utils.tile_imgs(np.concatenate([images[:n], grey[:n], result[:n]]), num_col=n, pad_val=255)
  from PIL import Image
  Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


if __name__ == '__main__':
  main()
