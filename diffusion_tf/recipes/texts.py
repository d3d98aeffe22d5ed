"""Flag lists and help texts that several recipes share (each stated once)."""

# The flags after a script's own: the same in every train / evaluation / sample command.
TRAIN_TAIL = 'clip_mode allow_kwargs_mismatch mixed_precision'
SAMPLER_FLAGS = 'sampler steps eta spacing order'
EVALUATION_TAIL = (SAMPLER_FLAGS + ' inception_graph seed stats_cache_dir ref_stats export_npz '
                   'export_png_dir pretrained')
SAMPLE_FLAGS = ('model_dir ckpt num_samples batch_size ' + SAMPLER_FLAGS + ' seed ema out '
                'overwrite mixed_precision export_npz export_png_dir pretrained')

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
