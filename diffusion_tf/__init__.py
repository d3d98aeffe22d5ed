"""diffusion_tf: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) on TensorFlow 2.

    import diffusion_tf as dtf
    betas = dtf.get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
    diffusion = dtf.GaussianDiffusion2(betas=betas, model_mean_type='eps',
                                       model_var_type='fixedlarge', loss_type='mse')
    net = dtf.UNet(**dtf.MODEL_CONFIGS['unet2d16b2'], out_ch=3, resolution=32)
    samples = diffusion.p_sample_loop(lambda x, t: net(x, t), shape=(16, 32, 32, 3))
"""

from . import startup

startup.import_tensorflow_quietly()  # before anything below imports TensorFlow

from . import checkpoints, diffusion_utils, diffusion_utils_2, nn, utils
from .diffusion_base import get_beta_schedule, normal_kl
from .diffusion_utils import GaussianDiffusion
from .diffusion_utils_2 import GaussianDiffusion2
from .models import unet
from .models.unet import MODEL_CONFIGS, UNet

__version__ = '2.0.0'
