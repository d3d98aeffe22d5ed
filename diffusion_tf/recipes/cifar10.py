"""CIFAR-10 (32x32, unconditional): the paper's FID 3.17 model, v2 diffusion (eps prediction,
fixedlarge sampling variance, MSE loss), batch 128, lr 2e-4 with 5000 warmup steps."""

from .recipe import Data, Diffusion, Evaluation, Model, Recipe, Train
from .texts import EXPORT_COMMAND_HELP, EXPORT_FLAGS  # noqa: I001
from .texts import EVALUATION_FLAGS_HELP, EVALUATION_TAIL, SAMPLE_FLAGS, SAMPLE_HELP, TRAIN_TAIL
from .texts import INSPECT_FLAGS, INSPECT_HELP, HF_FLAGS, HF_HELP
from .texts import EDIT_COMMANDS, EDIT_DOCS

CIFAR10 = Recipe(
    name='cifar10',
    data=Data(dataset='cifar10', randflip=1, tfds_data_dir='tensorflow_datasets'),
    model=Model(model_name='unet2d16b2', dropout=0.1),
    diffusion=Diffusion(version=2, num_diffusion_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                        beta_schedule='linear', model_mean_type='eps',
                        model_var_type='fixedlarge', loss_type='mse'),
    train=Train(optimizer='adam', total_bs=128, grad_clip=1., lr=2e-4, warmup=5000,
                ema_decay=0.9999, iterations_per_loop=2000),
    evaluation=Evaluation(total_bs=256, num_inception_samples=50000,
                          tfds_data_dir='tensorflow_datasets'),
    commands={
        **EDIT_COMMANDS,
        'train': 'exp_name tpu_name bucket_name_prefix model_name dataset optimizer total_bs '
                 'grad_clip lr warmup num_diffusion_timesteps beta_start beta_end beta_schedule '
                 'model_mean_type model_var_type loss_type dropout randflip tfds_data_dir log_dir '
                 'keep_checkpoint_max | region max_steps save_every_steps save_checkpoints_secs '
                 + TRAIN_TAIL + ' folder resolution ' + HF_FLAGS,
        'evaluation': 'model_dir tpu_name bucket_name_prefix once dump_samples_only total_bs '
                      'tfds_data_dir load_ckpt | region num_inception_samples samples_dir '
                      + EVALUATION_TAIL,
        'simple_eval': 'model_dir tpu_name bucket_name_prefix mode load_ckpt total_bs '
                       'tfds_data_dir | max_batches region',
        'sample': SAMPLE_FLAGS,
        'inspect': INSPECT_FLAGS,
        'export': EXPORT_FLAGS,
    },
    docs={
        'inspect': INSPECT_HELP,
        'export': EXPORT_COMMAND_HELP,
        **EDIT_DOCS,
        'train': 'Trains the CIFAR-10 model; re-running the same command resumes the run.\n'
                 'With --dataset folder --folder DIR --resolution R it trains the same recipe on '
                 'any images.\n' + HF_HELP,
        'evaluation': 'FID / Inception Score of the EMA weights: 50000 samples against the train '
                      '(49920) and test (9984) images. Watches --model_dir for new checkpoints '
                      'unless --once or --load_ckpt (e.g. model.ckpt-790000); --dump_samples_only '
                      'writes the samples as .npz shards instead.\n' + EVALUATION_FLAGS_HELP,
        'simple_eval': 'Bits/dim of every train or test image (--mode bpd_train / bpd_eval) or '
                       'progressive x0-prediction samples (--mode progressive_samples) of the EMA '
                       'weights of --load_ckpt (default: the latest checkpoint), written under '
                       '<model_dir>/simple_eval/.',
        'sample': SAMPLE_HELP.format(release='diffusion_cifar10_model'),
    })
