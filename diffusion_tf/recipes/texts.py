"""Flag lists and help texts that several recipes share (each stated once)."""

from .recipe import HF_DATA_FLAGS

# The flags after a script's own: the same in every train / evaluation / sample command.
TRAIN_TAIL = 'clip_mode allow_kwargs_mismatch mixed_precision'
HF_FLAGS = ' '.join(HF_DATA_FLAGS)
HF_HELP = ('With --dataset hf --hf_dataset NAME_OR_PATH it trains on a `datasets` data set: a Hub '
           'id or a local folder (save_to_disk, parquet / arrow files, an imagefolder); '
           '--hf_split (train), --image_column (image), --hf_config, --hf_cache_dir, '
           '--hf_streaming (read as it trains); --resolution R centre-crops and resizes (else all '
           'images must have one square size).')
SAMPLER_FLAGS = 'sampler steps eta spacing order'
EVALUATION_TAIL = (SAMPLER_FLAGS + ' inception_graph seed stats_cache_dir ref_stats export_npz '
                   'export_png_dir pretrained')
SAMPLE_FLAGS = ('model_dir ckpt num_samples batch_size ' + SAMPLER_FLAGS + ' seed ema out '
                'overwrite mixed_precision export_npz export_png_dir pretrained')
INSPECT_FLAGS = 'model_dir ckpt pretrained ema'
EXPORT_FLAGS = 'model_dir ckpt | pretrained ' + SAMPLER_FLAGS + ' format quantize out overwrite ema'

SAMPLER_HELP = ('--sampler/--steps/--eta/--spacing/--order pick a faster sampler (results then '
                'go to eval_<sampler><steps>... instead of eval)')
EXPORT_HELP = ('--export_npz PATH / --export_png_dir DIR (with --dump_samples_only and --once or '
               '--load_ckpt) also write the dumped samples as one .npz with arr_0 (guided-'
               'diffusion\'s evaluator) / as PNG files (clean-fid, torch-fidelity).')
STATS_HELP = ('Reference statistics of the real images are cached (--stats_cache_dir); '
              '--ref_stats PATH compares with a TTUR / pytorch-fid statistics file (mu, sigma) '
              'instead (metric reffid).')
EVALUATION_FLAGS_HELP = (SAMPLER_HELP + '; --inception_graph is a .pb or .tar.gz of the Inception '
                         'network (default: located in the cache or downloaded once, see '
                         'inception.py).\n' + STATS_HELP + '\n' + EXPORT_HELP)
SAMPLE_HELP = ('Samples from a run (--model_dir) or a checkpoint prefix (--ckpt, e.g. the '
               'authors\' {release}/model.ckpt-N) and writes OUT.npz (uint8) and OUT.png.\n'
               '--export_npz PATH / --export_png_dir DIR also write them as one .npz with arr_0 / '
               'as PNGs.\n--pretrained NAME_OR_PATH: a Hub id (google/ddpm-cifar10-32) or a '
               'diffusers folder.')
INSPECT_HELP = ('Prints what --model_dir (a run), --ckpt (a checkpoint prefix) or --pretrained (a Hub '
                'id, a diffusers folder) holds: the model class, its configuration, parameter '
                'count, bytes, dtypes and scheduler, from the configs and file headers alone '
                '(nothing is built); or why it cannot be loaded.')
EXPORT_COMMAND_HELP = (
    'Exports a run (--model_dir), a checkpoint (--ckpt) or a pretrained model (--pretrained) with '
    'the sampler (--sampler/--steps/--eta/--spacing/--order baked in, EMA weights unless --noema) '
    'to the folder --out, which runs without diffusion_tf (see docs/deployment.md).\n'
    '--format saved_model (default): serving_default(seed) -> uint8 images, from_noise(x_T, seed), '
    'denoise(x, t); tflite: denoiser.tflite and sampler.tflite (--quantize none, fp16 or dynamic: '
    'the denoiser\'s weights); onnx: denoiser.onnx and sampler.onnx (pip install -e \'.[export]\').\n'
    '--overwrite replaces an existing --out.')

# The editing commands, the same in every script.
_MODEL_FLAGS = 'model_dir ckpt pretrained'
_EDIT_TAIL = 'seed ema out overwrite mixed_precision resize'
EDIT_COMMANDS = {
    'inpaint': (f'{_MODEL_FLAGS} images masks invert_mask method steps jump_length jump_n_sample '
                f'eta sampler spacing order batch_size {_EDIT_TAIL}'),
    'img2img': f'{_MODEL_FLAGS} images strength {SAMPLER_FLAGS} batch_size {_EDIT_TAIL}',
    'interpolate': f'{_MODEL_FLAGS} images t num mix {_EDIT_TAIL}',
}
_SOURCES = ('The model: --model_dir (a run), --ckpt (a checkpoint prefix) or --pretrained (a Hub '
            'id or diffusers folder). --images: an .npz (images, arr_0 or samples; uint8 NHWC), '
            'a PNG / JPEG file, a folder of them, or several separated by commas; images of '
            'another size than the model\'s are refused unless --resize. Writes OUT.npz '
            '(samples, uint8) and OUT.png (a grid), and one summary line.')
EDIT_DOCS = {
    'inpaint': ('Fills the holes of --images where --masks is black (diffusers\' convention: white '
                '= keep; --invert_mask: white = fill; grey masks are cut at 128; one mask or one '
                'per image). --method repaint (default): RePaint as diffusers\' RePaintPipeline, '
                '--steps 250 with --jump_length 10 / --jump_n_sample 10 (2,410 network '
                'evaluations per image), --eta 0 (the share of the posterior noise added in the '
                'hole). --method replace: the known pixels replaced by q(x_t | x_0) after every '
                'step of --sampler ddpm or ddim (--steps evaluations). The known pixels of the '
                'result are the input\'s. OUT.png: input, mask and result rows.\n' + _SOURCES),
    'img2img': ('SDEdit: noises --images to --strength (0..1) of the sampler\'s steps with '
                'q(x_t | x_0) and runs --sampler from there (strength 0 returns the input, 1 '
                'samples from q(x_T | x_0)). OUT.png: input and result rows.\n' + _SOURCES),
    'interpolate': ('The DDPM paper\'s interpolation: each pair of --images is diffused to step '
                    '--t with the same noise, mixed (--mix slerp or lerp) at --num values of '
                    'lambda from 0 to 1 and decoded with the ancestral sampler, one noise draw '
                    'for the row. OUT.png: one row per pair, the inputs at its ends.\n' + _SOURCES),
}
