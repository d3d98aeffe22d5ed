"""The built-in data set: scikit-learn's 8x8 handwritten digits (1,797 images, no download)
upsampled to 16x16, grey, with the paper's CIFAR-10 diffusion. unet_digits_lite (16 channels at
16x16) at batch 64 for 2,500 steps trains to recognisable digits on a laptop CPU in minutes;
flips off (digits are not mirror-symmetric); a faster EMA than the paper's 0.9999 because the run
is short; a learning rate annealed to 0."""

from .recipe import Data, Diffusion, Evaluation, Model, Recipe, Sampling, Train
from .texts import EXPORT_COMMAND_HELP, EXPORT_FLAGS  # noqa: I001
from .texts import SAMPLE_FLAGS, SAMPLE_HELP, SAMPLER_FLAGS, SAMPLER_HELP, STATS_HELP, EXPORT_HELP
from .texts import INSPECT_FLAGS, INSPECT_HELP, HF_FLAGS, HF_HELP
from .texts import EDIT_COMMANDS, EDIT_DOCS

DIGITS = Recipe(
    name='digits',
    data=Data(dataset='digits', randflip=0, resolution=16, channels=1),
    model=Model(model_name='unet_digits_lite', dropout=0.0, block_size=1, mixed_precision='auto'),
    diffusion=Diffusion(version=2, num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                        beta_schedule='linear', model_mean_type='eps',
                        model_var_type='fixedlarge', loss_type='mse'),
    train=Train(optimizer='adam', total_bs=64, grad_clip=1., lr=1e-3, warmup=100,
                lr_schedule='linear', ema_decay=0.995, max_steps=2500, save_checkpoints_secs=600,
                seed=0, num_sample_images=64, sample_steps=100),
    evaluation=Evaluation(total_bs=100, num_inception_samples=1000, features='digits'),
    sampling=Sampling(recognise='digits'),
    commands={
        **EDIT_COMMANDS,
        'train': 'exp_name tpu_name bucket_name_prefix model_name dataset optimizer total_bs '
                 'grad_clip lr warmup num_diffusion_timesteps beta_start beta_end beta_schedule '
                 'model_mean_type model_var_type loss_type dropout randflip log_dir '
                 'keep_checkpoint_max | resolution channels block_size ema_decay max_steps '
                 'num_sample_images region save_every_steps save_checkpoints_secs clip_mode '
                 'allow_kwargs_mismatch mixed_precision seed lr_schedule sample_steps ' + HF_FLAGS,
        'evaluation': 'model_dir tpu_name bucket_name_prefix once dump_samples_only total_bs '
                      'load_ckpt | region num_inception_samples samples_dir ' + SAMPLER_FLAGS
                      + ' features inception_graph seed stats_cache_dir ref_stats export_npz '
                      'export_png_dir pretrained',
        'sample': SAMPLE_FLAGS,
        'inspect': INSPECT_FLAGS,
        'export': EXPORT_FLAGS,
    },
    docs={
        'inspect': INSPECT_HELP,
        'export': EXPORT_COMMAND_HELP,
        **EDIT_DOCS,
        'train': """Trains the digits model (flips off: digits are not mirror-symmetric; a faster EMA
than the paper's 0.9999 because the run is short), then samples a grid with EMA weights.
The default recipe, unet_digits_lite (16 channels at 16x16) at batch 64 for 2,500 steps, has
0.68x the arithmetic of the earlier one (--model_name unet_digits --total_bs 32 --max_steps
5000 --warmup 200) for as many recognisable samples: 93%, 91%, 90% of 256 with seeds 0, 1, 2.
--lr_schedule linear (default; 'constant' is the original's) anneals the learning rate to 0
at --max_steps: with the earlier recipe a little more of the samples were recognisable (91-93%
in three runs against 90%).
--sample_steps 100 (default): the end-of-training grid uses the paper's ancestral sampler on
100 evenly spaced of the 1000 steps: 10x faster, and with this model as good (90-93% of 256
samples recognisable in four runs; 87%, 90%, 92% in three with all 1000 steps);
--sample_steps 1000 takes every step.
--seed fixes weights, data order, timesteps and noise (default 0; --seed None: unseeded).
--mixed_precision auto (default): bfloat16 (float32 weights, loss and EMA) on a CPU with a
native bf16 unit (AMX, AVX512_BF16), where it keeps the samples as recognisable; float32
elsewhere. kwargs.json records the choice, so a resumed run keeps it; --mixed_precision none
trains in float32.
--channels 1 (default) models the grey digits as they are; 3 models them as RGB images with
three equal channels, like the paper's data sets: the model then also has to learn to keep
its channels equal, and in the same time its samples are more often malformed or tinted.
--block_size 2 runs the U-Net on 2x2 space-to-depth blocks (the original CelebA-HQ/LSUN
models' option): a step costs 0.6x, but in the same time the samples are far worse (48%
recognisable after 5,000 steps against 92% at full resolution after 4,000).
""" + HF_HELP,
        'evaluation': 'FID / Inception Score of the EMA weights: 1000 samples against the train '
                      '(1700 in batches of 100) and eval (100) images, measured with the features '
                      'of a digits classifier (--features digits, the default; see '
                      'digits_features.py and the README for the scale: real held-out digits '
                      'score about 18, noise about 180) or of the Inception network (--features '
                      'inception, with --inception_graph a .pb or .tar.gz, default: located in the '
                      'cache or downloaded once, see inception.py).\n' + SAMPLER_HELP + '.\n'
                      + STATS_HELP + '\n' + EXPORT_HELP,
        'sample': 'Samples from a digits run (or checkpoint), writes OUT.npz and OUT.png and says '
                  'how many samples a digit classifier recognises.\n'
                  + SAMPLE_HELP.split('\n', 1)[1],
    })
