"""The recognisability check printed after the digits quick start: it must accept real digits
and reject noise, blanks and in-between images, and report which digits appear."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from diffusion_tf.tpu_utils import datasets

from diffusion_tf.metrics import digits_classifier as dc

RES = 16


@pytest.fixture(scope='module')
def held_out():
  """Classifier fitted on 70% of the real digits; the other 30% as uint8 images + labels."""
  images, labels = datasets.load_digits_array(RES), load_digits().target
  idx_a, idx_b = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=0,
                                  stratify=labels)
  clf = dc.fit_svm(dc._features(images[idx_a]), labels[idx_a])
  return clf, images[idx_b], labels[idx_b]


def test_held_out_real_digits_are_classified_and_recognised(held_out):
  clf, images, labels = held_out
  pred, margin = dc.classify(clf, dc._features(images))
  assert np.mean(pred == labels) > 0.98
  assert np.all(margin[pred == labels] >= 0)
  assert np.mean(margin >= dc.DEFAULT_MARGIN) > 0.95


def test_blends_of_two_digits_are_mostly_rejected(held_out):
  clf, images, labels = held_out
  rs = np.random.RandomState(0)
  i, j = rs.randint(0, len(labels), 300), rs.randint(0, len(labels), 300)
  keep = labels[i] != labels[j]
  blends = (0.5 * images[i][keep].astype(np.float64) + 0.5 * images[j][keep]).round()
  _, margin = dc.classify(clf, dc._features(blends.astype(np.uint8)))
  assert np.mean(margin >= dc.DEFAULT_MARGIN) < 0.5


def test_report_on_real_noise_and_blank_images():
  real = datasets.load_digits_array(RES)[:100]
  report = dc.recognisable_digits(real)
  assert report.num_samples == 100 and report.num_recognisable >= 98
  assert report.digits_present == list(range(10))
  assert sum(report.counts.values()) == report.num_recognisable
  assert '(all ten)' in report.summary() and f'{report.num_recognisable}/100' in report.summary()

  rs = np.random.RandomState(1)
  noise = rs.randint(0, 256, (20, RES, RES, 3)).astype(np.uint8)
  blank = np.zeros((20, RES, RES, 3), np.uint8)
  for junk in (noise, blank):
    r = dc.recognisable_digits(junk)
    assert r.num_recognisable == 0 and r.fraction == 0
    assert 'missing: 0123456789' in r.summary()


def test_report_names_missing_digits():
  images, labels = datasets.load_digits_array(RES), load_digits().target
  only_sevens = images[labels == 7][:10]
  report = dc.recognisable_digits(only_sevens)
  assert report.digits_present == [7]
  assert 'missing: 012345689' in report.summary()


@pytest.mark.parametrize('bad', [np.zeros((4, RES, RES, 3), np.float32),
                                 np.zeros((RES, RES, 3), np.uint8),
                                 np.zeros((4, RES, 8, 3), np.uint8)])
def test_bad_input_is_refused(bad):
  with pytest.raises(ValueError, match='expected'):
    dc.recognisable_digits(bad)
