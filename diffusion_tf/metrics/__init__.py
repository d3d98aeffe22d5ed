"""Measuring samples: the Inception network (download, cache, checksum), cached reference
statistics of real images, the FID / Inception Score worker with resumable sample shards,
and the built-in digits set's feature network and classifier.

IS and FID themselves are computed by `tpu_utils.classifier_metrics_numpy`, the original's
module."""
