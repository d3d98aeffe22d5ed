"""Unconditional CIFAR-10 (32x32), the paper's FID 3.17 model.

Train (TPU, with the original bucket layout gs://<prefix>-<region>/...):
  python3 scripts/run_cifar.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME
Evaluate (FID / Inception Score on the EMA model):
  python3 scripts/run_cifar.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR
Locally (GPU or CPU, data under ./tensorflow_datasets, runs under ./logs):
  python3 scripts/run_cifar.py train --exp_name my_run
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_tf import cli, runners  # noqa: E402


def train(exp_name='EXP', tpu_name=None, bucket_name_prefix=None, model_name='unet2d16b2',
          dataset='cifar10', optimizer='adam', total_bs=128, grad_clip=1., lr=2e-4, warmup=5000,
          num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
          model_mean_type='eps', model_var_type='fixedlarge', loss_type='mse', dropout=0.1,
          randflip=1, tfds_data_dir='tensorflow_datasets', log_dir='logs', keep_checkpoint_max=2,
          *, region=None, max_steps=None, save_every_steps=None, save_checkpoints_secs=1600,
          clip_mode='global', allow_kwargs_mismatch=False, mixed_precision=None, folder=None,
          resolution=None):
  """Trains the CIFAR-10 model; re-running the same command resumes the run.
  With --dataset folder --folder DIR --resolution R it trains the same recipe on any images."""
  runners.train(dict(locals()), iterations_per_loop=2000)


def evaluation(model_dir, tpu_name=None, bucket_name_prefix=None, once=False,
               dump_samples_only=False, total_bs=256, tfds_data_dir='tensorflow_datasets',
               load_ckpt=None,
               *, region=None, num_inception_samples=50000, samples_dir=None, sampler='ddpm',
               steps=None, eta=0., spacing='uniform', order=None, inception_graph=None, seed=0,
               stats_cache_dir=None, ref_stats=None,
               export_npz=None, export_png_dir=None, pretrained=None):
  """FID / Inception Score of the EMA weights: 50000 samples against the train (49920) and
  test (9984) images. Watches --model_dir for new checkpoints unless --once or --load_ckpt
  (e.g. model.ckpt-790000); --dump_samples_only writes the samples as .npz shards instead.
  --sampler/--steps/--eta/--spacing/--order pick a faster sampler (results then go to
  eval_<sampler><steps>... instead of eval); --inception_graph is a .pb or .tar.gz of the
  Inception network (default: located in the cache or downloaded once, see inception.py).
  Reference statistics of the real images are cached (--stats_cache_dir); --ref_stats PATH
  compares with a TTUR / pytorch-fid statistics file (mu, sigma) instead (metric reffid).
  --export_npz PATH / --export_png_dir DIR (with --dump_samples_only and --once or --load_ckpt)
  also write the dumped samples as one .npz with arr_0 (guided-diffusion's evaluator) / as
  PNG files (clean-fid, torch-fidelity)."""
  runners.evaluation(model_dir=model_dir, defaults=runners.script_defaults(train),
                     tpu_name=tpu_name, bucket_name_prefix=bucket_name_prefix,
                     region=region, data_paths={'tfds_data_dir': tfds_data_dir}, once=once,
                     dump_samples_only=dump_samples_only, total_bs=total_bs, load_ckpt=load_ckpt,
                     num_inception_samples=num_inception_samples, samples_dir=samples_dir,
                     sampler=sampler, steps=steps, eta=eta, spacing=spacing, order=order,
                     inception_graph=inception_graph, seed=seed, stats_cache_dir=stats_cache_dir,
                     ref_stats=ref_stats, export_npz=export_npz,
                     export_png_dir=export_png_dir, pretrained=pretrained)


def simple_eval(model_dir, tpu_name=None, bucket_name_prefix=None, mode='bpd_eval', load_ckpt=None,
                total_bs=256, tfds_data_dir='tensorflow_datasets',
                *, max_batches=None, region=None):
  """Bits/dim of every train or test image (--mode bpd_train / bpd_eval) or progressive
  x0-prediction samples (--mode progressive_samples) of the EMA weights of --load_ckpt
  (default: the latest checkpoint), written under <model_dir>/simple_eval/."""
  runners.simple_eval(model_dir=model_dir, defaults=runners.script_defaults(train),
                      mode=mode, total_bs=total_bs, tpu_name=tpu_name,
                      bucket_name_prefix=bucket_name_prefix, region=region,
                      data_paths={'tfds_data_dir': tfds_data_dir}, load_ckpt=load_ckpt,
                      max_batches=max_batches)


def sample(model_dir=None, ckpt=None, num_samples=64, batch_size=64, sampler='ddpm', steps=None,
           eta=0., spacing='uniform', order=None, seed=0, ema=True, out=None, overwrite=False,
           mixed_precision=None, export_npz=None, export_png_dir=None, pretrained=None):
  """Samples from a run (--model_dir) or a checkpoint prefix (--ckpt, e.g. the authors'
  diffusion_cifar10_model/model.ckpt-N) and writes OUT.npz (uint8) and OUT.png.
  --export_npz PATH / --export_png_dir DIR also write them as one .npz with arr_0 / as PNGs.
  --pretrained NAME_OR_PATH: a Hub id (google/ddpm-cifar10-32) or a diffusers folder."""
  runners.sample(train, **locals())


if __name__ == '__main__':
  cli.main({'train': train, 'sample': sample, 'evaluation': evaluation, 'simple_eval': simple_eval})
