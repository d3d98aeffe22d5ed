"""LSUN church, bedroom and cat 256x256 from StyleGAN2 dataset_tool TFRecords: the CelebA-HQ
recipe (v1 diffusion, the 256x256 U-Net, batch 64, lr 2e-5); cat without random flips
(--randflip 0). Evaluation's --tfr_file default is the original's, which lacks the church/
directory of training's."""

from .recipe import Data, Diffusion, Evaluation, Model, Recipe, Train
from .texts import EXPORT_COMMAND_HELP, EXPORT_FLAGS  # noqa: I001
from .texts import EVALUATION_FLAGS_HELP, EVALUATION_TAIL, SAMPLE_FLAGS, SAMPLE_HELP, TRAIN_TAIL
from .texts import INSPECT_FLAGS, INSPECT_HELP
from .texts import EDIT_COMMANDS, EDIT_DOCS

LSUN = Recipe(
    name='lsun',
    data=Data(dataset='lsun', randflip=1,
              tfr_file='tensorflow_datasets/lsun/church/church-r08.tfrecords'),
    model=Model(model_name='unet2d16b2c112244', dropout=0.0, block_size=1),
    diffusion=Diffusion(version=1, num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                        beta_schedule='linear', loss_type='noisepred'),
    train=Train(optimizer='adam', total_bs=64, grad_clip=1., lr=2e-5, warmup=5000),
    # "for memory reasons" the original compares with the first 234 batches (29952 images).
    evaluation=Evaluation(total_bs=128, num_inception_samples=2048, limit_dataset_size=30000,
                          tfr_file='tensorflow_datasets/lsun/church-r08.tfrecords'),
    commands={
        **EDIT_COMMANDS,
        'train': 'exp_name tpu_name bucket_name_prefix model_name dataset optimizer total_bs '
                 'grad_clip lr warmup num_diffusion_timesteps beta_start beta_end beta_schedule '
                 'loss_type dropout randflip block_size tfr_file log_dir warm_start_model_dir | '
                 'region max_steps save_every_steps save_checkpoints_secs keep_checkpoint_max '
                 + TRAIN_TAIL + ' shuffle_buffer',
        'evaluation': 'model_dir tpu_name bucket_name_prefix once dump_samples_only total_bs '
                      'tfr_file samples_dir num_inception_samples | load_ckpt region '
                      + EVALUATION_TAIL,
        'sample': SAMPLE_FLAGS,
        'inspect': INSPECT_FLAGS,
        'export': EXPORT_FLAGS,
    },
    docs={
        'inspect': INSPECT_HELP,
        'export': EXPORT_COMMAND_HELP,
        **EDIT_DOCS,
        'train': 'Trains an LSUN model; re-running the same command resumes the run.',
        'evaluation': 'FID / Inception Score of the EMA weights: 2048 samples against the first '
                      '234 shuffled batches (29952 images) of --tfr_file ("for memory reasons", '
                      'as the original). The default --tfr_file is the original\'s, which lacks '
                      'the church/ directory of the train default: pass the file you trained on. '
                      'Watches --model_dir unless --once or --load_ckpt (new).\n'
                      + EVALUATION_FLAGS_HELP,
        'sample': SAMPLE_HELP.format(release='diffusion_lsun_{church,bedroom,cat}_model'),
    })
