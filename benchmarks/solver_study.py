"""Quality against network evaluations for every sampler, on the built-in digits model.

    python scripts/run_digits.py train --log_dir /tmp/solver_logs        # ~10-25 min on 2 cores
    python benchmarks/solver_study.py --model_dir /tmp/solver_logs/9999-99-99/<run>
    python benchmarks/solver_study.py --report_only                     # table + plot from the json

For ddpm (strided ancestral), ddim (eta 0), pndm, dpmsolver++ (orders 2 and 3) and unipc at
5, 10, 20, 50 and 100 network evaluations, and the 1000-step ancestral sampler, draws
``--num_samples`` samples per seed (EMA weights) and measures: the share the digit classifier
recognises (`digits_classifier.recognisable_digits`), the number of distinct digits among
them, and the Fréchet distance between the features of the samples and of the real train
digits under the digits feature network (`digits_features`). pndm spends 9 evaluations on its
Runge-Kutta warm-up, so at 5 and 10 evaluations it runs without it (``skip_prk_steps``, PLMS).

``--diagnostics`` adds the runs that explain why DDIM trails the ancestral sampler (see
NOTES_solvers.md): DDIM without clipping x0, DDIM with eta=1 (stochastic), DPM-Solver++ with
x0 clipped, and the model's noise-prediction error against t on real digits.

Results accumulate in benchmarks/solver_study.json (a rerun skips points already there;
``--fresh`` starts over), then benchmarks/solver_study.md and resources/solver_study.png.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

JSON = os.path.join(HERE, 'solver_study.json')
MARKDOWN = os.path.join(HERE, 'solver_study.md')
PLOT = os.path.join(ROOT, 'resources', 'solver_study.png')


def use_results_name(name):
  """Keep this study's results apart: benchmarks/NAME.json and .md, resources/NAME.png."""
  global JSON, MARKDOWN, PLOT
  JSON, MARKDOWN = (os.path.join(HERE, f'{name}.{ext}') for ext in ('json', 'md'))
  PLOT = os.path.join(ROOT, 'resources', f'{name}.png')
EVALS = (5, 10, 20, 50, 100)
# line name -> Sampler keyword arguments for a budget of `e` network evaluations
LINES = {
    'ddpm': lambda e: dict(sampler='ddpm', steps=e),
    'ddim': lambda e: dict(sampler='ddim', steps=e),
    'pndm': lambda e: (dict(sampler='pndm', steps=e - 9) if e - 9 >= 4
                       else dict(sampler='pndm', steps=e - 1, skip_prk_steps=True)),
    'dpmsolver++ 2': lambda e: dict(sampler='dpmsolver++', steps=e, order=2),
    'dpmsolver++ 3': lambda e: dict(sampler='dpmsolver++', steps=e, order=3),
    'unipc 2': lambda e: dict(sampler='unipc', steps=e, order=2),
    'ddim eta1': lambda e: dict(sampler='ddim', steps=e, eta=1.),
    'sde-dpmsolver++ 2': lambda e: dict(sampler='sde-dpmsolver++', steps=e, order=2),
    'sasolver': lambda e: dict(sampler='sasolver', steps=e),
    'dpmsolver++_singlestep 2': lambda e: dict(sampler='dpmsolver++_singlestep', steps=e, order=2),
    'deis 2': lambda e: dict(sampler='deis', steps=e, order=2),
}
DIAGNOSTICS = {  # point name -> (evaluations, Sampler keyword arguments, clip x0)
    'ddim noclip@100': (100, dict(sampler='ddim', steps=100), False),
    'ddim eta1@100': (100, dict(sampler='ddim', steps=100, eta=1.), True),
    'dpmsolver++ 2 clip@20': (20, dict(sampler='dpmsolver++', steps=20, order=2), True),
}
REFERENCE = 'ddpm@1000'


def cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def load_results(fresh):
  if fresh or not os.path.exists(JSON):
    return {'cpu': cpu_name(), 'points': {}}
  with open(JSON) as f:
    return json.load(f)


def save_results(results):
  tmp = JSON + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  os.replace(tmp, JSON)


def draw_samples(model, kwargs, num_samples, batch_size, seed, clip=None):
  """uint8 samples [N, H, W, C] and the seconds spent (wall, user+system CPU)."""
  from diffusion_tf import sampling, solvers, utils
  draw = sampling.Sampler(model, constant_weights=True, **kwargs)
  if clip is not None:  # the DDIM clipping switch and DPM-Solver++ thresholding (= clipping)
    draw = _with_clip(draw, clip, sampling, solvers)
  out = []
  t0, c0 = time.time(), _cpu_seconds()
  for i in range(-(-num_samples // batch_size)):
    out.append(draw(min(batch_size, num_samples - i * batch_size), sampling.batch_seed(seed, i)))
  return utils.to_uint8(np.concatenate(out)), time.time() - t0, _cpu_seconds() - c0, draw


def _with_clip(draw, clip, sampling, solvers):
  """The Sampler with x0 clipping switched (ddim's clip_denoised, dpmsolver++'s thresholding)."""
  def loop(batch_size):
    shape = (batch_size, *draw.model.image_shape)
    if draw.sampler == 'ddim':
      return sampling.ddim_sample_loop(draw.diffusion, draw.model.denoise, shape=shape,
                                       timesteps=draw.timesteps, eta=draw.eta, noise_fn=draw.noise,
                                       clip_denoised=clip)
    return solvers.dpm_solver_sample_loop(draw.diffusion, draw.model.denoise, shape=shape,
                                          steps=draw.steps, order=draw.order, spacing=draw.spacing,
                                          thresholding=clip, noise_fn=draw.noise)
  draw._sample_loop = loop
  return draw


def _cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def measure(images):
  from diffusion_tf.metrics import digits_classifier, digits_features
  report = digits_classifier.recognisable_digits(images)
  return dict(recognised=report.fraction, distinct_digits=len(report.digits_present),
              fd=float(digits_features.frechet_distance(images)),
              fd_pixels=pixel_pca_frechet_distance(images),
              pixel_std=float(np.std(images / 127.5 - 1.)))


PCA_DIMS = 32


def pixel_pca_frechet_distance(images):
  """A second feature space nothing here was tuned on: the Fréchet distance between the
  samples and the real train digits projected on the real digits' first 32 principal
  components of their pixels (grey levels in [0, 1])."""
  from diffusion_tf.metrics import digits_features, reference_stats
  real = _grey(digits_features.real_digits('train', resolution=images.shape[1]))
  mean = real.mean(axis=0)
  basis = np.linalg.svd(real - mean, full_matrices=False)[2][:PCA_DIMS].T
  stats = lambda x: dict(mu=((x - mean) @ basis).mean(axis=0), sigma=np.cov((x - mean) @ basis, rowvar=False))
  return reference_stats.fid_from_stats(stats(real), stats(_grey(images)))


def _grey(images):
  images = np.asarray(images, np.float64)
  return images.mean(axis=-1).reshape(len(images), -1) / 255.


def run_point(results, name, evals, model, kwargs, args, clip=None):
  pt = results['points'].setdefault(name, {'evaluations': evals, 'kwargs': kwargs, 'seeds': {}})
  for seed in args.seeds:
    if str(seed) in pt['seeds']:
      continue
    images, wall, cpu, draw = draw_samples(model, kwargs, args.num_samples, args.batch_size, seed, clip)
    assert draw.num_evaluations == evals, (name, draw.num_evaluations)
    m = measure(images)
    m.update(wall_s=wall, cpu_s=cpu, num_samples=int(len(images)))
    pt['seeds'][str(seed)] = m
    save_results(results)
    print(f'{name:>24} seed {seed}: recognised {100 * m["recognised"]:.1f}%  digits '
          f'{m["distinct_digits"]}  FD {m["fd"]:.2f}  ({wall:.0f} s wall, {cpu:.0f} s CPU)', flush=True)


def eps_error_by_t(model, args, results):
  """The model's noise-prediction MSE on real digits at a few t (per pixel), and what a
  perfect model's eps would weigh at each t in DDIM's x0 prediction (sqrt(1/a - 1))."""
  import tensorflow as tf
  from diffusion_tf.metrics import digits_features
  real = digits_features.real_digits('held_out').astype(np.float32) / 127.5 - 1.
  d = model.diffusion
  rng = np.random.RandomState(0)
  rows = {}
  for t in (0, 5, 10, 20, 50, 100, 200, 400, 700, 999):
    noise = rng.randn(*real.shape).astype(np.float32)
    tt = tf.fill([len(real)], t)
    x_t = d.q_sample(tf.constant(real), tt, noise=tf.constant(noise))
    eps = model.denoise(x_t, tt).numpy()
    mse = float(np.mean((eps - noise) ** 2))
    rows[str(t)] = dict(eps_mse=mse, x0_rmse_from_eps=float(np.sqrt(mse * (1. / d.alphas_cumprod[t] - 1.))))
  results['eps_error_by_t'] = rows
  save_results(results)


# ----------------------------------------------------------------------------- report

def summarise(pt):
  seeds = list(pt['seeds'].values())
  out = {}
  for k in ('recognised', 'distinct_digits', 'fd', 'fd_pixels', 'pixel_std', 'wall_s', 'cpu_s'):
    if any(k not in s for s in seeds):  # measured since (fd_pixels)
      continue
    v = np.array([s[k] for s in seeds], np.float64)
    out[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0., len(v))
  return out


def _cell(stat, scale=1., fmt='{:.1f}'):
  mean, sd, n = stat
  return (fmt.format(mean * scale) + (' ± ' + fmt.format(sd * scale) if n > 1 else ''))


def write_markdown(results):
  pts = results['points']
  lines = [f'# Sampler quality against network evaluations (digits model)', '',
           f'CPU: {results.get("cpu", "?")}. Each cell: mean ± standard deviation over seeds '
           f'({_seeds_note(results)}), recognised share (%) / Fréchet distance of the digits '
           f'features to the real train digits (then, where measured, / the same in the pixel-PCA '
           f'space, `pixel_pca_frechet_distance`). Reference: the 1000-step ancestral sampler.', '']
  if REFERENCE in pts:
    ref = summarise(pts[REFERENCE])
    lines.append(f'**ddpm, 1000 evaluations: {_cell(ref["recognised"], 100)}% recognised, '
                 f'FD {_cell(ref["fd"], fmt="{:.2f}")}'
                 + (f' (pixel-PCA FD {_cell(ref["fd_pixels"], fmt="{:.2f}")})' if 'fd_pixels' in ref else '')
                 + f', {_cell(ref["distinct_digits"], fmt="{:.1f}")} distinct digits.**')
    lines.append('')
  present = [e for e in EVALS if any(f'{n}@{e}' in pts for n in LINES)]
  lines.append('| sampler | ' + ' | '.join(f'{e} evals' for e in present) + ' |')
  lines.append('|---|' + '---|' * len(present))
  for name in LINES:
    cells = []
    for e in present:
      p = pts.get(f'{name}@{e}')
      if p is None or not p['seeds']:
        cells.append('')
        continue
      s = summarise(p)
      cells.append(f'{_cell(s["recognised"], 100)}% / {_cell(s["fd"], fmt="{:.2f}")}'
                   + (f' / {_cell(s["fd_pixels"], fmt="{:.2f}")}' if 'fd_pixels' in s else ''))
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  diag = [n for n in DIAGNOSTICS if n in pts and pts[n]['seeds']]
  if diag:
    lines += ['', '| diagnostic run | evaluations | recognised % | FD | distinct digits | pixel std |',
              '|---|---|---|---|---|---|']
    for n in [REFERENCE, 'ddim@100', 'ddim@20', 'dpmsolver++ 2@20', 'dpmsolver++ 2@100'] + diag:
      if n in pts and pts[n]['seeds']:
        s = summarise(pts[n])
        lines.append(f'| {n} | {pts[n]["evaluations"]} | {_cell(s["recognised"], 100)} | '
                     f'{_cell(s["fd"], fmt="{:.2f}")} | {_cell(s["distinct_digits"], fmt="{:.1f}")} | '
                     f'{_cell(s["pixel_std"], fmt="{:.3f}")} |')
  if 'eps_error_by_t' in results:
    rows = dict(sorted(results['eps_error_by_t'].items(), key=lambda kv: int(kv[0])))
    lines += ['', '| t | ' + ' | '.join(rows) + ' |', '|---|' + '---|' * len(rows),
              '| eps MSE | ' + ' | '.join(f'{r["eps_mse"]:.3f}' for r in rows.values()) + ' |',
              '| x0 RMSE from eps | ' + ' | '.join(f'{r["x0_rmse_from_eps"]:.3f}' for r in rows.values()) + ' |']
  timing = [n for n in (REFERENCE, 'dpmsolver++ 2@20') if n in pts and pts[n]['seeds']]
  if timing:
    lines.append('')
    for n in timing:
      s = summarise(pts[n])
      num = next(iter(pts[n]['seeds'].values()))['num_samples']
      lines.append(f'- {n}: {s["wall_s"][0]:.0f} s wall, {s["cpu_s"][0]:.0f} s CPU for {num} samples '
                   f'(shared machine; CPU time is the steadier number).')
  with open(MARKDOWN, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


def _seeds_note(results):
  counts = sorted({len(p['seeds']) for p in results['points'].values() if p['seeds']})
  nums = sorted({s['num_samples'] for p in results['points'].values() for s in p['seeds'].values()})
  return f'{"/".join(map(str, counts))} seeds of {"/".join(map(str, nums))} samples'


COLOURS = {'ddpm': (120, 120, 120), 'ddim': (214, 39, 40), 'pndm': (148, 103, 189),
           'dpmsolver++ 2': (31, 119, 180), 'dpmsolver++ 3': (23, 190, 207),
           'unipc 2': (44, 160, 44), 'ddim eta1': (255, 127, 14), 'sde-dpmsolver++ 2': (140, 86, 75),
           'sasolver': (227, 119, 194), 'dpmsolver++_singlestep 2': (188, 189, 34), 'deis 2': (0, 0, 128)}


def write_plot(results):
  """Two panels (recognised share, FD) against evaluations (log axis), one line per sampler,
  the 1000-step sampler as a dashed line."""
  from PIL import Image, ImageDraw
  pts = results['points']
  W, H, pad = 1100, 460, 60
  img = Image.new('RGB', (W, H), 'white')
  dr = ImageDraw.Draw(img)
  panels = [('recognised share (%)', 'recognised', 100.), ('Frechet distance (digits features)', 'fd', 1.)]
  pw = (W - 3 * pad) // 2
  lx0, lx1 = np.log(4), np.log(1200)
  for p, (title, key, scale) in enumerate(panels):
    x0, y0, x1, y1 = pad + p * (pw + pad), 40, pad + p * (pw + pad) + pw, H - 110
    vals = [summarise(v)[key][0] * scale for v in pts.values() if v['seeds'] and key in summarise(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0, 1)
    lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)
    X = lambda e: x0 + (np.log(e) - lx0) / (lx1 - lx0) * (x1 - x0)
    Y = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)
    dr.rectangle([x0, y0, x1, y1], outline='black')
    dr.text((x0, 15), title, fill='black')
    for e in EVALS + (1000,):
      dr.line([X(e), y1, X(e), y1 + 5], fill='black')
      dr.text((X(e) - 8, y1 + 8), str(e), fill='black')
    dr.text(((x0 + x1) // 2 - 60, y1 + 25), 'network evaluations', fill='black')
    for v in np.linspace(lo, hi, 5):
      dr.text((x0 - 45, Y(v) - 6), f'{v:.1f}', fill='black')
    if REFERENCE in pts and pts[REFERENCE]['seeds']:
      ref = summarise(pts[REFERENCE])[key][0] * scale
      for xs in range(int(x0), int(x1), 12):
        dr.line([xs, Y(ref), xs + 6, Y(ref)], fill=(0, 0, 0))
      dr.ellipse([X(1000) - 4, Y(ref) - 4, X(1000) + 4, Y(ref) + 4], fill='black')
    for name, colour in COLOURS.items():
      xy = [(X(e), Y(summarise(pts[f'{name}@{e}'])[key][0] * scale)) for e in EVALS
            if f'{name}@{e}' in pts and pts[f'{name}@{e}']['seeds']]
      if len(xy) > 1:
        dr.line(xy, fill=colour, width=3)
      for x, y in xy:
        dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
  lx, ly = pad, H - 55
  for name, colour in list(COLOURS.items()) + [('ddpm, 1000 steps (dashed)', (0, 0, 0))]:
    if lx + 24 + 7 * len(name) > W:  # the legend wraps to a second row
      lx, ly = pad, ly + 22
    dr.rectangle([lx, ly, lx + 18, ly + 10], fill=colour)
    dr.text((lx + 24, ly - 2), name, fill='black')
    lx += 24 + 7 * len(name) + 20
  os.makedirs(os.path.dirname(PLOT), exist_ok=True)
  img.save(PLOT)
  print('wrote', PLOT)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model_dir', help='a digits training run (its latest checkpoint, EMA weights)')
  ap.add_argument('--num_samples', type=int, default=256)
  ap.add_argument('--batch_size', type=int, default=256)
  ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  ap.add_argument('--evals', type=int, nargs='+', default=list(EVALS))
  ap.add_argument('--lines', nargs='+', default=list(LINES), choices=list(LINES))
  ap.add_argument('--no_reference', action='store_true', help='skip the 1000-step sampler')
  ap.add_argument('--diagnostics', action='store_true')
  ap.add_argument('--report_only', action='store_true')
  ap.add_argument('--fresh', action='store_true', help='discard earlier results in the json')
  ap.add_argument('--results', default='solver_study',
                  help='results name: benchmarks/NAME.json / .md, resources/NAME.png')
  args = ap.parse_args()
  use_results_name(args.results)
  results = load_results(args.fresh)
  if not args.report_only:
    if not args.model_dir:
      ap.error('--model_dir is required unless --report_only')
    from diffusion_tf import loading
    from diffusion_tf.recipes import DIGITS
    model, _, prefix, step = loading.load_for_sampling(DIGITS, model_dir=args.model_dir)
    results.update(model=prefix, model_step=step, cpu=cpu_name())
    for seed in args.seeds:  # seed by seed, so that a cut-short run still has whole grids
      one = argparse.Namespace(**{**vars(args), 'seeds': [seed]})
      if not args.no_reference:
        run_point(results, REFERENCE, 1000, model, dict(sampler='ddpm'), one)
      for e in args.evals:
        for name in args.lines:
          run_point(results, f'{name}@{e}', e, model, LINES[name](e), one)
      if args.diagnostics and seed == args.seeds[0]:  # the diagnostics: first seed only
        eps_error_by_t(model, args, results)
        for name, (e, kwargs, clip) in DIAGNOSTICS.items():
          run_point(results, name, e, model, kwargs, one, clip=clip)
  write_markdown(results)
  write_plot(results)


if __name__ == '__main__':
  main()
