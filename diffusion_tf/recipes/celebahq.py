"""CelebA-HQ 256x256: v1 diffusion (noise prediction, posterior variance), the 256x256 U-Net
(channel multipliers 1, 1, 2, 2, 4, 4), batch 64, lr 2e-5. Needs a manual TFDS download."""

from .recipe import Data, Diffusion, Evaluation, Model, Recipe, Train
from .texts import EXPORT_COMMAND_HELP, EXPORT_FLAGS  # noqa: I001
from .texts import EVALUATION_FLAGS_HELP, EVALUATION_TAIL, SAMPLE_FLAGS, SAMPLE_HELP, TRAIN_TAIL
from .texts import INSPECT_FLAGS, INSPECT_HELP, HF_FLAGS, HF_HELP
from .texts import EDIT_COMMANDS, EDIT_DOCS

CELEBAHQ = Recipe(
    name='celebahq',
    data=Data(dataset='celebahq256', randflip=1, tfds_data_dir='tensorflow_datasets'),
    model=Model(model_name='unet2d16b2c112244', dropout=0.0, block_size=1),
    diffusion=Diffusion(version=1, num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                        beta_schedule='linear', loss_type='noisepred'),
    train=Train(optimizer='adam', total_bs=64, grad_clip=1., lr=0.00002, warmup=5000),
    evaluation=Evaluation(total_bs=128, num_inception_samples=2048,
                          tfds_data_dir='tensorflow_datasets'),
    commands={
        **EDIT_COMMANDS,
        'train': 'exp_name tpu_name bucket_name_prefix model_name dataset optimizer total_bs '
                 'grad_clip lr warmup num_diffusion_timesteps beta_start beta_end beta_schedule '
                 'loss_type dropout randflip block_size tfds_data_dir log_dir | region max_steps '
                 'save_every_steps save_checkpoints_secs keep_checkpoint_max '
                 + TRAIN_TAIL + ' folder resolution ' + HF_FLAGS,
        'evaluation': 'model_dir tpu_name bucket_name_prefix once dump_samples_only total_bs '
                      'tfds_data_dir | load_ckpt region num_inception_samples samples_dir '
                      + EVALUATION_TAIL,
        'sample': SAMPLE_FLAGS,
        'inspect': INSPECT_FLAGS,
        'export': EXPORT_FLAGS,
    },
    docs={
        'inspect': INSPECT_HELP,
        'export': EXPORT_COMMAND_HELP,
        **EDIT_DOCS,
        'train': 'Trains the CelebA-HQ model; re-running the same command resumes the run.\n'
                 'With --dataset folder --folder DIR --resolution R it trains the same recipe on '
                 'any images.\n' + HF_HELP,
        'evaluation': 'FID / Inception Score of the EMA weights: 2048 samples against the 29952 '
                      'train images (there is no test split). Watches --model_dir for new '
                      'checkpoints unless --once or --load_ckpt (new; e.g. model.ckpt-560000); '
                      '--dump_samples_only writes .npz shards instead.\n' + EVALUATION_FLAGS_HELP,
        'sample': SAMPLE_HELP.format(release='diffusion_celeba_hq_model'),
    })
