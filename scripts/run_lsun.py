"""LSUN church, bedroom and cat, 256x256, from StyleGAN2 dataset_tool TFRecords.

Church:
  python3 scripts/run_lsun.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME --tfr_file 'tensorflow_datasets/lsun/church/church-r08.tfrecords'
  python3 scripts/run_lsun.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR --tfr_file 'tensorflow_datasets/lsun/church/church-r08.tfrecords'
Bedroom:
  python3 scripts/run_lsun.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME --tfr_file 'tensorflow_datasets/lsun/bedroom-full/bedroom-full-r08.tfrecords'
  python3 scripts/run_lsun.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR --tfr_file 'tensorflow_datasets/lsun/bedroom-full/bedroom-full-r08.tfrecords'
Cat (no random flips):
  python3 scripts/run_lsun.py train --bucket_name_prefix $BUCKET_PREFIX --exp_name $EXPERIMENT_NAME --tpu_name $TPU_NAME --tfr_file 'tensorflow_datasets/lsun/cat/cat-r08.tfrecords' --randflip 0
  python3 scripts/run_lsun.py evaluation --bucket_name_prefix $BUCKET_PREFIX --tpu_name $EVAL_TPU_NAME --model_dir $MODEL_DIR --tfr_file 'tensorflow_datasets/lsun/cat/cat-r08.tfrecords'
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_tf import cli, runners  # noqa: E402


def train(exp_name='EXP', tpu_name=None, bucket_name_prefix=None, model_name='unet2d16b2c112244',
          dataset='lsun', optimizer='adam', total_bs=64, grad_clip=1., lr=2e-5, warmup=5000,
          num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
          loss_type='noisepred', dropout=0.0, randflip=1, block_size=1,
          tfr_file='tensorflow_datasets/lsun/church/church-r08.tfrecords', log_dir='logs',
          warm_start_model_dir=None,
          *, region=None, max_steps=None, save_every_steps=None, save_checkpoints_secs=1600,
          keep_checkpoint_max=2, clip_mode='global', allow_kwargs_mismatch=False,
          mixed_precision=None, shuffle_buffer=None):
  """Trains an LSUN model; re-running the same command resumes the run."""
  runners.train(dict(locals()), iterations_per_loop=1000,
                warm_start_model_dir=warm_start_model_dir)


def evaluation(model_dir, tpu_name=None, bucket_name_prefix=None, once=False,
               dump_samples_only=False, total_bs=128,
               tfr_file='tensorflow_datasets/lsun/church-r08.tfrecords', samples_dir=None,
               num_inception_samples=2048,
               *, load_ckpt=None, region=None, sampler='ddpm', steps=None, eta=0.,
               spacing='uniform', order=None, inception_graph=None, seed=0, stats_cache_dir=None, ref_stats=None,
               export_npz=None, export_png_dir=None, pretrained=None):
  """FID / Inception Score of the EMA weights: 2048 samples against the first 234 shuffled
  batches (29952 images) of --tfr_file ("for memory reasons", as the original). The default
  --tfr_file is the original's, which lacks the church/ directory of the train default: pass
  the file you trained on. Watches --model_dir unless --once or --load_ckpt (new).
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
                     region=region, data_paths={'tfr_file': tfr_file}, once=once,
                     dump_samples_only=dump_samples_only, total_bs=total_bs, load_ckpt=load_ckpt,
                     num_inception_samples=num_inception_samples, samples_dir=samples_dir,
                     limit_dataset_size=30000, sampler=sampler, steps=steps, eta=eta, spacing=spacing, order=order,
                     inception_graph=inception_graph, seed=seed, stats_cache_dir=stats_cache_dir,
                     ref_stats=ref_stats, export_npz=export_npz,
                     export_png_dir=export_png_dir, pretrained=pretrained)


def sample(model_dir=None, ckpt=None, num_samples=64, batch_size=64, sampler='ddpm', steps=None,
           eta=0., spacing='uniform', order=None, seed=0, ema=True, out=None, overwrite=False,
           mixed_precision=None, export_npz=None, export_png_dir=None, pretrained=None):
  """Samples from a run (--model_dir) or a checkpoint prefix (--ckpt, e.g. the authors'
  diffusion_lsun_{church,bedroom,cat}_model/model.ckpt-N) and writes OUT.npz (uint8) and OUT.png.
  --export_npz PATH / --export_png_dir DIR also write them as one .npz with arr_0 / as PNGs.
  --pretrained NAME_OR_PATH: a Hub id (google/ddpm-cifar10-32) or a diffusers folder."""
  runners.sample(train, **locals())


if __name__ == '__main__':
  cli.main({'train': train, 'sample': sample, 'evaluation': evaluation})
