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
