"""Draws the speedups of a benchmark run as a bar chart (PNG, Pillow only).

    python benchmarks/plot.py [--json benchmarks/results.json] [--out resources/benchmark_speedups.png]

One row per CIFAR-10-config case, bars = diffusers fp32 time / our time for our fp32 and bf16
variants (as the samplers run inference: constant weights where the run measured them).
"""

import argparse
import json
import os

from PIL import Image, ImageDraw, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ROWS = [  # (label, case name, batch, our fp32 variant, our bf16 variant)
    ('forward, batch 1', 'forward', 1, 'ours/float32', 'ours/bfloat16'),
    ('forward, batch 1, const weights', 'forward', 1, 'ours/float32/const', 'ours/bfloat16/const'),
    ('forward, batch 16', 'forward', 16, 'ours/float32', 'ours/bfloat16'),
    ('forward, batch 64', 'forward', 64, 'ours/float32', 'ours/bfloat16'),
    ('train step, batch 16', 'train', 16, 'ours/float32', 'ours/bfloat16'),
    ('train step, batch 64', 'train', 64, 'ours/float32', 'ours/bfloat16'),
    ('DDPM step, batch 16', 'sample_ddpm', 16, 'ours/float32/const', 'ours/bfloat16/const'),
    ('DDIM loop, batch 16', 'sample_ddim', 16, 'ours/float32/const', 'ours/bfloat16/const'),
]
COLOURS = {'fp32': (66, 133, 244), 'bf16': (251, 140, 0)}


def speedups(data):
  """[(label, {'fp32': x, 'bf16': y})] for the rows the run has."""
  out = []
  for label, name, batch, v32, v16 in ROWS:
    case = next((c for c in data['cases'] if c['name'] == name and c['batch'] == batch
                 and c['model'] == 'cifar32' and not c.get('xla_case')), None)
    if case is None or 'diffusers/float32' not in case['results']:
      continue
    ref = case['results']['diffusers/float32']['median']
    bars = {k: ref / case['results'][v]['median'] for k, v in (('fp32', v32), ('bf16', v16))
            if v in case['results']}
    out.append((label, bars))
  return out


def _font(size):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size
    return ImageFont.load_default()


def draw(rows, path, title):
  left, right, top, row_h, bar_h = 300, 60, 70, 44, 16
  top_speed = max(max(b.values()) for _, b in rows)
  xmax = max(2.0, float(int(top_speed) + 1))
  width = 1000
  height = top + row_h * len(rows) + 60
  scale = (width - left - right) / xmax
  img = Image.new('RGB', (width, height), 'white')
  d = ImageDraw.Draw(img)
  font, small = _font(16), _font(13)
  d.text((20, 15), title, fill='black', font=_font(18))
  x0 = left
  for tick in range(int(xmax) + 1):  # grid
    x = x0 + tick * scale
    d.line([(x, top - 10), (x, top + row_h * len(rows))], fill=(225, 225, 225))
    d.text((x - 8, top + row_h * len(rows) + 5), f'{tick}x', fill='black', font=small)
  x1 = x0 + 1.0 * scale  # diffusers fp32 = 1
  d.line([(x1, top - 10), (x1, top + row_h * len(rows))], fill='black', width=2)
  d.text((x1 + 4, top - 28), 'diffusers fp32', fill='black', font=small)
  for i, (label, bars) in enumerate(rows):
    y = top + i * row_h
    d.text((20, y + 12), label, fill='black', font=font)
    for j, key in enumerate(('fp32', 'bf16')):
      if key not in bars:
        continue
      yb = y + 4 + j * (bar_h + 2)
      d.rectangle([x0, yb, x0 + bars[key] * scale, yb + bar_h], fill=COLOURS[key])
      d.text((x0 + bars[key] * scale + 5, yb), f'{bars[key]:.2f}x', fill='black', font=small)
  ly = height - 30  # legend
  for j, key in enumerate(('fp32', 'bf16')):
    lx = left + j * 200
    d.rectangle([lx, ly, lx + 18, ly + 14], fill=COLOURS[key])
    d.text((lx + 25, ly - 1), f'ours {key}', fill='black', font=small)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.png'
  img.save(tmp)
  os.replace(tmp, path)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--json', default=os.path.join(HERE, 'results.json'))
  p.add_argument('--out', default=os.path.join(ROOT, 'resources', 'benchmark_speedups.png'))
  a = p.parse_args()
  with open(a.json) as f:
    data = json.load(f)
  rows = speedups(data)
  if not rows:
    raise SystemExit(f'{a.json} has no CIFAR-10 cases with a diffusers fp32 time')
  draw(rows, a.out, 'Speedup over diffusers fp32 (diffusers time / ours; higher is better), '
       f'{data.get("threads", 2)}-thread CPU')
  print(f'wrote {a.out}')


if __name__ == '__main__':
  main()
