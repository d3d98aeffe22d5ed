"""Quality against network evaluations for every sampler, on the built-in digits model.

    python scripts/run_digits.py train --log_dir /tmp/solver_logs        # ~10-25 min on 2 cores
    python benchmarks/solver_study.py --model_dir /tmp/solver_logs/9999-99-99/<run> --results NAME
    python benchmarks/solver_study.py --report_only --results NAME      # table + plot from the json

For every line of `LINES` (each sampler of the registry; dpmsolver++ at orders 2 and 3, ddim
also with eta 1) at a budget of 5, 10, 20, 50 and 100 network evaluations, and the 1000-step
ancestral sampler, draws ``--num_samples`` samples per seed (EMA weights) and measures: the
share the digit classifier recognises (`digits_classifier.recognisable_digits`; the report
gives the pooled share of all seeds with its 95% Wilson interval), the number of distinct
digits among them, and the Fréchet distance between the features of the samples and of the
real train digits in two spaces: the digits feature network (`digits_features`) and the real
digits' first 32 pixel principal components (`pixel_pca_frechet_distance`, nothing was tuned
on it). Steps are chosen so that the evaluations are the budget: pndm spends 9 evaluations on
its Runge-Kutta warm-up, so at 5 and 10 it runs without it (``skip_prk_steps``, PLMS); heun,
kdpm2 and kdpm2_ancestral spend 2N - 1 for N steps, so an even budget is not reachable and
they run one evaluation under it (the json's ``spent``).

``--diagnostics`` adds the runs that explain why DDIM trails the ancestral sampler (see
docs/sampling.md): DDIM without clipping x0, DDIM with eta=1 (stochastic), DPM-Solver++ with
x0 clipped, and the model's noise-prediction error against t on real digits.

Results accumulate in benchmarks/NAME.json (a rerun skips points already there; ``--fresh``
starts over; results of another checkpoint are refused, not mixed), then benchmarks/NAME.md
and resources/NAME.png. Points are run one after the other, all seeds of a point with one
compiled loop; run the budgets in the order you need them (``--evals 20 10``, then ...).
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
    'euler': lambda e: dict(sampler='euler', steps=e),
    'euler_ancestral': lambda e: dict(sampler='euler_ancestral', steps=e),
    'lms 4': lambda e: dict(sampler='lms', steps=e, order=4),
    # 2N - 1 evaluations for N steps: an even budget is not reachable, N = e // 2 spends e - 1
    'heun': lambda e: dict(sampler='heun', steps=(e + 1) // 2),
    'kdpm2': lambda e: dict(sampler='kdpm2', steps=(e + 1) // 2),
    'kdpm2_ancestral': lambda e: dict(sampler='kdpm2_ancestral', steps=(e + 1) // 2),
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


def make_sampler(model, kwargs, clip=None):
  """One Sampler per point, compiled once and reused for every seed."""
  from diffusion_tf import sampling, solvers
  draw = sampling.Sampler(model, constant_weights=True, **kwargs)
  if clip is not None:  # the DDIM clipping switch and DPM-Solver++ thresholding (= clipping)
    draw = _with_clip(draw, clip, sampling, solvers)
  return draw


def draw_samples(draw, num_samples, batch_size, seed):
  """uint8 samples [N, H, W, C] and the seconds spent (wall, user+system CPU)."""
  from diffusion_tf import sampling, utils
  out = []
  t0, c0 = time.time(), _cpu_seconds()
  for i in range(-(-num_samples // batch_size)):
    out.append(draw(min(batch_size, num_samples - i * batch_size), sampling.batch_seed(seed, i)))
  return utils.to_uint8(np.concatenate(out)), time.time() - t0, _cpu_seconds() - c0


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
  draw = None
  for seed in args.seeds:
    if str(seed) in pt['seeds']:
      continue
    draw = draw or make_sampler(model, kwargs, clip)
    images, wall, cpu = draw_samples(draw, args.num_samples, args.batch_size, seed)
    assert draw.num_evaluations <= evals, (name, draw.num_evaluations)
    pt['spent'] = draw.num_evaluations  # below the budget where it is not reachable (heun, kdpm2)
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

TARGETS = {20: (2., 1.5), 10: (5., 2.)}  # evaluations -> (points below the reference, FD ratio)
STOCHASTIC = ('ddpm', 'ddim eta1', 'sde-dpmsolver++ 2', 'sasolver', 'euler_ancestral', 'kdpm2_ancestral')


def summarise(pt):
  seeds = list(pt['seeds'].values())
  out = {}
  for k in ('recognised', 'distinct_digits', 'fd', 'fd_pixels', 'pixel_std', 'wall_s', 'cpu_s'):
    if any(k not in s for s in seeds):  # measured since (fd_pixels)
      continue
    v = np.array([s[k] for s in seeds], np.float64)
    out[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0., len(v))
  return out


def recognised_interval(pt, z=1.96):
  """The pooled recognised share of all seeds' samples and its 95% Wilson interval."""
  n = sum(s['num_samples'] for s in pt['seeds'].values())
  k = sum(round(s['recognised'] * s['num_samples']) for s in pt['seeds'].values())
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return p, centre - half, centre + half


def _cell(stat, scale=1., fmt='{:.1f}'):
  mean, sd, n = stat
  return (fmt.format(mean * scale) + (' ± ' + fmt.format(sd * scale) if n > 1 else ''))


def _done(pts, name):
  return name in pts and pts[name]['seeds']


def target_check(pts, name, budget):
  """(points against the reference, FD ratio digits, FD ratio pixels, met) or None."""
  if budget not in TARGETS or not _done(pts, REFERENCE) or not _done(pts, name):
    return None
  ref, s = summarise(pts[REFERENCE]), summarise(pts[name])
  points = 100 * (s['recognised'][0] - ref['recognised'][0])
  ratios = [s[k][0] / ref[k][0] for k in ('fd', 'fd_pixels')]
  below, ratio = TARGETS[budget]
  return points, ratios[0], ratios[1], points >= -below and max(ratios) <= ratio


def write_markdown(results):
  pts = results['points']
  lines = ['# Sampler quality against network evaluations (digits model)', '',
           f'Model: `{results.get("model", "?")}` (EMA weights). CPU: {results.get("cpu", "?")}. '
           f'{_seeds_note(results)}. Recognised: the share of all seeds\' samples the digit '
           'classifier recognises, with its 95% (Wilson) interval; FD: Fréchet distance to the real '
           'train digits in the digits feature network\'s space / in the real digits\' first 32 pixel '
           'principal components (`pixel_pca_frechet_distance`), mean ± standard deviation over seeds.', '']
  if _done(pts, REFERENCE):
    lines += [f'**Reference, ddpm with 1000 evaluations: {_row(pts, REFERENCE)}.**', '']
  lines += _overview(pts) + _budget_tables(pts) + _diagnostics(results)
  with open(MARKDOWN, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


def _row(pts, name):
  s = summarise(pts[name])
  p, lo, hi = recognised_interval(pts[name])
  fdp = f' / {_cell(s["fd_pixels"], fmt="{:.2f}")}' if 'fd_pixels' in s else ''
  return (f'{100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] recognised, '
          f'{_cell(s["distinct_digits"], fmt="{:.1f}")} distinct digits, FD '
          f'{_cell(s["fd"], fmt="{:.2f}")}{fdp}, {s["cpu_s"][0]:.0f} s CPU per {_num(pts[name])} samples')


def _num(pt):
  return next(iter(pt['seeds'].values()))['num_samples']


def _lines_present(pts):
  names = list(LINES) + [n for n in sorted({k.split('@')[0] for k in pts}) if n not in LINES]
  return [n for n in names if any(f'{n}@{e}' in pts for e in EVALS)]


def _overview(pts):
  """Samplers x budgets: recognised % / FD digits / FD pixels; a missing cell says so."""
  out = ['## All budgets: recognised % / FD (digits features) / FD (pixel PCA)', '',
         '| sampler | ' + ' | '.join(f'{e} evals' for e in EVALS) + ' |', '|---|' + '---|' * len(EVALS)]
  for name in _lines_present(pts):
    cells = []
    for e in EVALS:
      key = f'{name}@{e}'
      if not _done(pts, key):
        cells.append('not run')
        continue
      s = summarise(pts[key])
      spent = pts[key].get('spent', e)
      cells.append(f'{100 * recognised_interval(pts[key])[0]:.1f} / {s["fd"][0]:.2f}'
                   + (f' / {s["fd_pixels"][0]:.2f}' if 'fd_pixels' in s else '')
                   + (f' ({spent} evals)' if spent != e else '')
                   + (f' ({s["recognised"][2]} seeds)' if s['recognised'][2] < _max_seeds(pts) else ''))
    out.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return out + ['', 'heun, kdpm2 and kdpm2_ancestral cost 2N - 1 evaluations for N steps: an even '
                'budget is not reachable, they run N = budget / 2 steps (one evaluation under it).']


def _max_seeds(pts):
  return max((len(p['seeds']) for p in pts.values()), default=0)


def _budget_tables(pts):
  out = []
  for e in EVALS:
    names = [n for n in _lines_present(pts) if _done(pts, f'{n}@{e}')]
    if not names:
      continue
    target = (f'; target: within {TARGETS[e][0]:g} points of the reference and {TARGETS[e][1]:g}x '
              'its FD in both spaces' if e in TARGETS else '')
    out += ['', f'## {e} network evaluations{target}', '',
            '| sampler | evals | recognised % [95% CI] | distinct digits | FD digits | FD pixel PCA | CPU s | vs reference |',
            '|---|---|---|---|---|---|---|---|']
    rows = []
    for n in names:
      pt = pts[f'{n}@{e}']
      s, (p, lo, hi) = summarise(pt), recognised_interval(pt)
      t = target_check(pts, f'{n}@{e}', e)
      verdict = '' if t is None else (f'{t[0]:+.1f} pts, {t[1]:.2f}x / {t[2]:.2f}x: '
                                       + ('**meets**' if t[3] else 'misses'))
      rows.append((-p, f'| {n} | {pt.get("spent", e)} | {100 * p:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | '
                   f'{_cell(s["distinct_digits"], fmt="{:.1f}")} | {_cell(s["fd"], fmt="{:.2f}")} | '
                   f'{_cell(s["fd_pixels"], fmt="{:.2f}") if "fd_pixels" in s else ""} | '
                   f'{s["cpu_s"][0]:.1f} | {verdict} |'))
    out += [r for _, r in sorted(rows, key=lambda r: r[0])]
  return out


def _diagnostics(results):
  pts, lines = results['points'], []
  diag = [n for n in DIAGNOSTICS if _done(pts, n)]
  if diag:
    lines += ['', '| diagnostic run | evaluations | recognised % | FD | distinct digits | pixel std |',
              '|---|---|---|---|---|---|']
    for n in [REFERENCE, 'ddim@100', 'ddim@20', 'dpmsolver++ 2@20', 'dpmsolver++ 2@100'] + diag:
      if _done(pts, n):
        s = summarise(pts[n])
        lines.append(f'| {n} | {pts[n]["evaluations"]} | {_cell(s["recognised"], 100)} | '
                     f'{_cell(s["fd"], fmt="{:.2f}")} | {_cell(s["distinct_digits"], fmt="{:.1f}")} | '
                     f'{_cell(s["pixel_std"], fmt="{:.3f}")} |')
  if 'eps_error_by_t' in results:
    rows = dict(sorted(results['eps_error_by_t'].items(), key=lambda kv: int(kv[0])))
    lines += ['', '| t | ' + ' | '.join(rows) + ' |', '|---|' + '---|' * len(rows),
              '| eps MSE | ' + ' | '.join(f'{r["eps_mse"]:.3f}' for r in rows.values()) + ' |',
              '| x0 RMSE from eps | ' + ' | '.join(f'{r["x0_rmse_from_eps"]:.3f}' for r in rows.values()) + ' |']
  return lines + ['', 'CPU s: user + system CPU seconds of one seed\'s samples, mean over seeds, on a '
                  'shared machine (CPU time is the steadier number; wall time is in the json).']


def _seeds_note(results):
  counts = sorted({len(p['seeds']) for p in results['points'].values() if p['seeds']})
  nums = sorted({s['num_samples'] for p in results['points'].values() for s in p['seeds'].values()})
  return f'{"/".join(map(str, counts))} seeds of {"/".join(map(str, nums))} samples per point'


COLOURS = {'ddpm': (120, 120, 120), 'ddim': (214, 39, 40), 'pndm': (148, 103, 189),
           'dpmsolver++ 2': (31, 119, 180), 'dpmsolver++ 3': (23, 190, 207),
           'unipc 2': (44, 160, 44), 'ddim eta1': (255, 127, 14), 'sde-dpmsolver++ 2': (140, 86, 75),
           'sasolver': (227, 119, 194), 'dpmsolver++_singlestep 2': (188, 189, 34), 'deis 2': (0, 0, 128),
           'euler': (255, 187, 120), 'euler_ancestral': (230, 190, 0), 'lms 4': (152, 223, 138),
           'heun': (174, 199, 232), 'kdpm2': (197, 176, 213), 'kdpm2_ancestral': (128, 0, 0)}


def write_plot(results):
  """Three panels (recognised share, FD in each feature space; FD on a log axis) against
  evaluations (log axis), one line per sampler (thick: stochastic), the 1000-step sampler as a
  dashed line."""
  from PIL import Image, ImageDraw
  pts = results['points']
  panels = [('recognised share (%)', 'recognised', False),
            ('Frechet distance, digits features (log)', 'fd', True),
            ('Frechet distance, pixel PCA (log)', 'fd_pixels', True)]
  W, H, pad = 1500, 520, 60
  img = Image.new('RGB', (W, H), 'white')
  dr = ImageDraw.Draw(img)
  pw = (W - (len(panels) + 1) * pad) // len(panels)
  for p, panel in enumerate(panels):
    _panel(dr, pts, panel, (pad + p * (pw + pad), 40, pad + p * (pw + pad) + pw, H - 130))
  _legend(dr, W, pad, H - 75)
  os.makedirs(os.path.dirname(PLOT), exist_ok=True)
  img.save(PLOT)
  print('wrote', PLOT)


def _value(pt, key, log):
  v = 100 * recognised_interval(pt)[0] if key == 'recognised' else summarise(pt)[key][0]
  return np.log10(v) if log else v


def _panel(dr, pts, panel, box):
  title, key, log = panel
  x0, y0, x1, y1 = box
  vals = [_value(v, key, log) for v in pts.values() if v['seeds'] and key in summarise(v)]
  lo, hi = (min(vals), max(vals)) if vals else (0, 1)
  lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)
  lx0, lx1 = np.log(4), np.log(1200)
  X = lambda e: x0 + (np.log(e) - lx0) / (lx1 - lx0) * (x1 - x0)
  Y = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)
  dr.rectangle([x0, y0, x1, y1], outline='black')
  dr.text((x0, 15), title, fill='black')
  for e in EVALS + (1000,):
    dr.line([X(e), y1, X(e), y1 + 5], fill='black')
    dr.text((X(e) - 8, y1 + 8), str(e), fill='black')
  dr.text(((x0 + x1) // 2 - 60, y1 + 25), 'network evaluations', fill='black')
  for v in np.linspace(lo, hi, 6):
    dr.text((x0 - 45, Y(v) - 6), f'{10 ** v:.2f}' if log else f'{v:.1f}', fill='black')
  if _done(pts, REFERENCE) and key in summarise(pts[REFERENCE]):
    ref = _value(pts[REFERENCE], key, log)
    for xs in range(int(x0), int(x1), 12):
      dr.line([xs, Y(ref), xs + 6, Y(ref)], fill=(0, 0, 0))
    dr.ellipse([X(1000) - 4, Y(ref) - 4, X(1000) + 4, Y(ref) + 4], fill='black')
  for name, colour in COLOURS.items():
    done = [pts[f'{name}@{e}'] for e in EVALS if _done(pts, f'{name}@{e}')]
    xy = [(X(pt.get('spent', pt['evaluations'])), Y(_value(pt, key, log))) for pt in done
          if key in summarise(pt)]
    if len(xy) > 1:
      dr.line(xy, fill=colour, width=3 if name in STOCHASTIC else 1)
    for x, y in xy:
      dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def _legend(dr, W, pad, ly):
  lx = pad
  for name, colour in list(COLOURS.items()) + [('ddpm, 1000 steps (dashed)', (0, 0, 0))]:
    if lx + 24 + 7 * len(name) > W:  # the legend wraps to a next row
      lx, ly = pad, ly + 22
    dr.rectangle([lx, ly, lx + 18, ly + 10 if name in STOCHASTIC else ly + 3], fill=colour)
    dr.text((lx + 24, ly - 2), name, fill='black')
    lx += 24 + 7 * len(name) + 20
  dr.text((pad, ly + 22), 'thick lines / bars: stochastic samplers; thin: deterministic (ODE)', fill='black')


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
    prefix = os.path.join(*prefix.split(os.sep)[-2:])  # run name / checkpoint, not where it lives
    if results['points'] and results.get('model') != prefix:  # never mix two models' numbers
      ap.error(f'{JSON} holds results of {results.get("model")}, not {prefix}: '
               'use another --results name or --fresh')
    results.update(model=prefix, model_step=step, cpu=cpu_name())
    # point by point, all seeds of a point at once: one compiled loop per point
    if not args.no_reference:
      run_point(results, REFERENCE, 1000, model, dict(sampler='ddpm'), args)
    for e in args.evals:
      for name in args.lines:
        run_point(results, f'{name}@{e}', e, model, LINES[name](e), args)
    if args.diagnostics:  # the diagnostics: first seed only
      one = argparse.Namespace(**{**vars(args), 'seeds': args.seeds[:1]})
      eps_error_by_t(model, args, results)
      for name, (e, kwargs, clip) in DIAGNOSTICS.items():
        run_point(results, name, e, model, kwargs, one, clip=clip)
  write_markdown(results)
  write_plot(results)


if __name__ == '__main__':
  main()
