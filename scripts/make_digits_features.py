"""Trains the digits feature network shipped as diffusion_tf/metrics/digits_features.npz.

  python scripts/make_digits_features.py            # rewrites the shipped weights
  python scripts/make_digits_features.py --out /tmp/w.npz --epochs 5

Seeded (weights, batch order, augmentation) and run with TF's deterministic ops, so the same
TF version on the same CPU reproduces the file. Trains on the real digits' train split (all
but the last `digits_features.HELD_OUT`, which are held out) at 16x16 grey, with random
shifts of up to one pixel so the features tolerate the small offsets of generated digits.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from diffusion_tf.metrics import digits_features  # noqa: E402


def digits_labels():
  from sklearn.datasets import load_digits
  labels = load_digits().target.astype(np.int64)
  return labels[:-digits_features.HELD_OUT], labels[-digits_features.HELD_OUT:]


def random_shift(images, rng, max_shift=1):
  """Each image shifted by up to ``max_shift`` pixels in each direction (zero fill)."""
  n, h, w, _ = images.shape
  pad = np.pad(images, [(0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)])
  dy, dx = rng.randint(0, 2 * max_shift + 1, size=(2, n))
  return np.stack([pad[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(*, epochs, batch_size, lr, seed):
  tf.config.experimental.enable_op_determinism()
  tf.random.set_seed(seed)
  rng = np.random.RandomState(seed)
  x_train = digits_features.real_digits('train')
  x_test = digits_features.real_digits('held_out')
  y_train, y_test = digits_labels()
  params = {k: tf.Variable(v, name=k) for k, v in digits_features.init_params(rng).items()}
  opt = tf.keras.optimizers.Adam(lr)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      _, logits = digits_features.forward(params, x)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, list(params.values()))
    opt.apply_gradients(zip(grads, list(params.values())))
    return loss

  for epoch in range(epochs):
    order = rng.permutation(len(x_train))
    losses = [float(step(random_shift(x_train[idx], rng).astype(np.float32), y_train[idx]))
              for idx in np.array_split(order, len(order) // batch_size)]
    if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
      _, logits = digits_features.forward(params, x_test)
      acc = np.mean(np.argmax(logits, axis=1) == y_test)
      print(f'epoch {epoch + 1}: loss {np.mean(losses):.4f}, held-out accuracy {acc:.4f}')
  return {k: v.numpy() for k, v in params.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default=digits_features.WEIGHTS)
  p.add_argument('--epochs', type=int, default=60)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--lr', type=float, default=2e-3)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  params = train(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
  digits_features.save_params(args.out, params)
  ext = digits_features.load_extractor(args.out)
  _, y_test = digits_labels()
  acc = np.mean(ext.predict(digits_features.real_digits('held_out')) == y_test)
  print(f'Wrote {args.out} ({os.path.getsize(args.out)} bytes, {ext.name}); held-out accuracy '
        f'of the saved (float16) weights {acc:.4f}')


if __name__ == '__main__':
  main()
