"""The DDPM U-Net (original §3) as a `tf.Module` with TF1 checkpoint variable names.

    net = UNet(**MODEL_CONFIGS['unet2d16b2'], out_ch=3)
    eps = net(x, t, training=False)   # x: float [B, 32, 32, 3] in [-1, 1], t: int [B]

Variables are created on construction when ``resolution`` is given, otherwise on the
first call; either way their names (without ``:0``) are the original's
(``model/down_0/block_0/conv1/W``, ``model/mid/attn_1/q/W``, ...).
"""

import tensorflow as tf

from .. import inputs, nn

# Named configurations of the original scripts (out_ch comes from the caller).
MODEL_CONFIGS = {
    # CIFAR-10, 35.7M parameters.
    'unet2d16b2': dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
    # CelebA-HQ / LSUN 256x256, 114M parameters.
    'unet2d16b2c112244': dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                              attn_resolutions=(16,)),
    # Built-in digits data set (not in the original): small enough to train on a laptop CPU.
    # Resampling without convolutions (nearest / average pool): 8% faster steps at 16x16 and
    # no measurable loss in sample quality after 3,000 steps.
    'unet_digits': dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                        resamp_with_conv=False),
    # The quick start's model since issue 13: 16 channels at 16x16 (not 32), 64 at 8x8 and 4x4,
    # 16 GroupNorm groups (32 do not divide 16 channels): 0.68x the floating-point operations
    # of unet_digits per image (35.8M against 52.9M multiply-adds) for the same share of
    # recognisable digits; narrowing 8x8 too (48 channels) cost quality.
    'unet_digits_lite': dict(ch=16, ch_mult=(1, 4, 4), num_res_blocks=1, attn_resolutions=(8,),
                             resamp_with_conv=False, norm_num_groups=16),
}


def nonlinearity(x):
  return tf.nn.silu(x)


class ResnetBlock(tf.Module):
  """GroupNorm-swish-conv, + temb projection, GroupNorm-swish-dropout-conv(zero init), + shortcut."""

  def __init__(self, in_ch, out_ch, temb_ch, *, name, dropout, conv_shortcut=False, norm=None):
    super().__init__(name=name.replace('/', '_'))
    self.dropout = dropout
    norm = norm or {}  # GroupNorm num_groups / eps
    self.norm1 = nn.GroupNorm(in_ch, name=name + '/norm1', **norm)
    self.conv1 = nn.Conv2D(in_ch, out_ch, name=name + '/conv1')
    self.temb_proj = nn.Dense(temb_ch, out_ch, name=name + '/temb_proj')
    self.norm2 = nn.GroupNorm(out_ch, name=name + '/norm2', **norm)
    self.conv2 = nn.Conv2D(out_ch, out_ch, name=name + '/conv2', init_scale=0.)
    self.shortcut = None
    if in_ch != out_ch:
      # `conv_shortcut` is never set in the original; kept for completeness.
      self.shortcut = (nn.Conv2D(in_ch, out_ch, name=name + '/conv_shortcut') if conv_shortcut
                       else nn.NIN(in_ch, out_ch, name=name + '/nin_shortcut'))

  def __call__(self, x, temb, training):
    h = self.conv1(self.norm1(x, swish=True))  # GroupNorm + swish fused (nn.group_norm)
    h += self.temb_proj(nonlinearity(temb))[:, None, None, :]
    h = self.norm2(h, swish=True)
    if training and self.dropout > 0:
      h = tf.nn.dropout(h, rate=self.dropout)
    if self.shortcut is not None:
      x = self.shortcut(x)
    # conv2 first: Conv2D + BiasAdd + Add(residual) becomes one fused oneDNN kernel.
    return self.conv2(h) + x


class AttnBlock(tf.Module):
  """Self-attention over all H*W positions; no swish; residual from the input.

  One head (the original's) unless ``head_dim`` is given: then ``ch // head_dim`` heads,
  head h on channels [h * head_dim, (h + 1) * head_dim) (diffusers' ``attention_head_dim``).
  """

  def __init__(self, ch, *, name, head_dim=None, norm=None):
    super().__init__(name=name.replace('/', '_'))
    if head_dim is not None and (head_dim < 1 or ch % head_dim):
      raise ValueError(f'AttnBlock {name}: {ch} channels do not split into heads of {head_dim}')
    self.num_heads = 1 if head_dim is None else ch // head_dim
    self.norm = nn.GroupNorm(ch, name=name + '/norm', **(norm or {}))
    self.q = nn.NIN(ch, ch, name=name + '/q')
    self.k = nn.NIN(ch, ch, name=name + '/k')
    self.v = nn.NIN(ch, ch, name=name + '/v')
    self.proj_out = nn.NIN(ch, ch, name=name + '/proj_out', init_scale=0.)

  def __call__(self, x):
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    h = self.norm(x)
    # q, k and v as one 1x1 convolution over concatenated kernels (the variables stay
    # separate: q/W, k/W, v/W in checkpoints). The 1/sqrt(C) of the logits is folded
    # into the q kernel and bias (a [C, C] multiply instead of a [B, HW, HW] one).
    heads = self.num_heads
    scale = int(C // heads) ** (-0.5)
    read = lambda v: nn.read_weight(v, tf.float32)
    w_qkv = tf.concat([read(self.q.W) * scale, read(self.k.W), read(self.v.W)], axis=1)
    b_qkv = tf.concat([read(self.q.b) * scale, read(self.k.b), read(self.v.b)], axis=0)
    qkv = nn.conv2d_1x1(h, w_qkv, b_qkv)  # [B, H, W, 3C]
    if heads == 1:
      q, k, v = (tf.reshape(z, [-1, H * W, C]) for z in tf.split(qkv, 3, axis=-1))
    else:  # [B, heads, HW, C / heads]
      q, k, v = (tf.transpose(tf.reshape(z, [-1, H * W, heads, C // heads]), [0, 2, 1, 3])
                 for z in tf.split(qkv, 3, axis=-1))
    # w[b, i, j] = <q_i, k_j> / sqrt(C), softmax over all key positions j (in float32).
    w = tf.matmul(q, k, transpose_b=True)
    w = tf.cast(tf.nn.softmax(tf.cast(w, tf.float32), axis=-1), x.dtype)
    h = tf.matmul(w, v)
    if heads != 1:
      h = tf.transpose(h, [0, 2, 1, 3])
    h = tf.reshape(h, [-1, H, W, C])
    # proj_out first: Conv2D + BiasAdd + Add(residual) fuse into one kernel.
    return self.proj_out(h) + x


class Downsample(tf.Module):
  """Stride-2 3x3 conv (or 2x2 average pool). ``padding`` 0: TF 'SAME', which pads bottom/right
  only (the original's); 1: one pixel on every side (diffusers' ``downsample_padding=1``)."""

  def __init__(self, ch, *, name, with_conv, padding=0):
    super().__init__(name=name.replace('/', '_'))
    if padding not in (0, 1):
      raise ValueError(f'Downsample {name}: padding must be 0 or 1, got {padding!r}')
    self.ch, self.padding = ch, padding
    pad = 'SAME' if padding == 0 else [[0, 0], [1, 1], [1, 1], [0, 0]]
    self.conv = nn.Conv2D(ch, ch, name=name + '/conv', stride=2, pad=pad) if with_conv else None

  def __call__(self, x):
    if self.conv is not None:
      return self.conv(x)
    return tf.nn.avg_pool2d(x, 2, 2, 'SAME')


class Upsample(tf.Module):
  def __init__(self, ch, *, name, with_conv):
    super().__init__(name=name.replace('/', '_'))
    self.ch = ch
    self.conv = nn.Conv2D(ch, ch, name=name + '/conv') if with_conv else None

  def __call__(self, x):
    # TF1 nearest resize with align_corners=True at exactly 2x is pixel duplication;
    # broadcast+reshape computes it and (unlike resize's gradient) compiles under XLA.
    B, H, W, C = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    x = tf.broadcast_to(x[:, :, None, :, None, :], [B, H, 2, W, 2, C])
    x = tf.reshape(x, [B, 2 * H, 2 * W, C])
    return self.conv(x) if self.conv is not None else x


COMPUTE_DTYPES = (None, 'float32', 'bfloat16', 'float16')


def _compute_dtype(compute_dtype):
  """A tf dtype (or None) from a name, a tf.DType or a NumPy dtype in `COMPUTE_DTYPES`."""
  if compute_dtype is not None and not isinstance(compute_dtype, str):
    try:
      compute_dtype = tf.as_dtype(compute_dtype).name
    except TypeError:
      pass  # refused below, with the accepted names
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}')
  return None if compute_dtype is None else tf.as_dtype(compute_dtype)


class UNet(tf.Module):
  """The original ``unet.model`` as an object. Call as ``net(x, t, training=False)``.

  x: float [B, S, S, in_ch] in [-1, 1]; t: int [B] timesteps. Returns [B, S, S, out_ch].
  NumPy arrays and Python numbers are accepted too (see `__call__`).

  ``compute_dtype`` (mixed precision): None (default) computes in the input's dtype and
  returns that dtype, as the original did. 'float32', 'bfloat16' or 'float16' cast the
  input to that dtype, run the convolutions, matmuls and elementwise work in it and return
  float32. Variables always stay float32 (each layer casts its weights to the activation
  dtype, so gradients arrive in float32); GroupNorm (statistics, normalisation and the
  fused swish), the attention softmax and the timestep-embedding MLP (temb/dense0,
  temb/dense1) run in float32. On CPUs with AMX/AVX512-BF16, 'bfloat16' is the fast path.

  Options beyond the original (for diffusers ``UNet2DModel`` configurations; the defaults are
  the original's): ``block_out_channels`` (channels per level instead of ``ch * ch_mult``;
  ``ch`` stays the conv_in / embedding width), ``attn_levels`` (a pair of per-level flags,
  (down, up), indexed by level, instead of ``attn_resolutions``), ``attn_head_dim``
  (multi-head attention), ``downsample_padding`` (0 or 1, see `Downsample`),
  ``flip_sin_to_cos`` / ``freq_shift`` (see `nn.get_timestep_embedding`),
  ``norm_num_groups`` / ``norm_eps`` (every GroupNorm).
  """

  def __init__(self, *, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions,
               dropout=0., resamp_with_conv=True, name='model', in_ch=None, resolution=None,
               compute_dtype=None, block_out_channels=None, attn_levels=None, attn_head_dim=None,
               downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_num_groups=32,
               norm_eps=1e-6):
    super().__init__(name=name.replace('/', '_'))
    self.set_compute_dtype(compute_dtype)
    self.ch, self.out_ch, self.ch_mult = ch, out_ch, tuple(ch_mult)
    self.block_out_channels = tuple(block_out_channels or (ch * m for m in ch_mult))
    if block_out_channels is not None:
      self.ch_mult = tuple(c / ch for c in self.block_out_channels)
    if attn_levels is not None:
      attn_levels = tuple(tuple(bool(a) for a in flags) for flags in attn_levels)
      if len(attn_levels) != 2 or any(len(f) != len(self.block_out_channels) for f in attn_levels):
        raise ValueError(f'attn_levels must be (down flags, up flags), one per level, got {attn_levels}')
    self.attn_levels, self.attn_head_dim = attn_levels, attn_head_dim
    self.downsample_padding = downsample_padding
    self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
    self.norm = dict(num_groups=norm_num_groups, eps=norm_eps)
    self.num_res_blocks, self.attn_resolutions = num_res_blocks, tuple(attn_resolutions)
    self.dropout, self.resamp_with_conv, self.scope = dropout, resamp_with_conv, name
    self.in_ch, self.resolution = None, None
    if resolution is not None:
      self.build(in_ch or 3, resolution)

  def set_compute_dtype(self, compute_dtype):
    """Runs the network in ``compute_dtype`` from the next call (or trace) on: a name of
    `COMPUTE_DTYPES`, a tf.DType or a NumPy dtype (see the class docstring). The variables
    are untouched (float32). Returns the network."""
    self.compute_dtype = _compute_dtype(compute_dtype)
    return self

  def build(self, in_ch, resolution):
    """Creates every variable for inputs of shape [B, resolution, resolution, in_ch]."""
    if self.resolution is not None:
      if (in_ch, resolution) != (self.in_ch, self.resolution):
        raise ValueError(f'UNet {self.scope!r} was built for {self.resolution}x{self.resolution}x'
                         f'{self.in_ch} inputs, got {resolution}x{resolution}x{in_ch}')
      return
    s, ch, nrb, dropout = self.scope, self.ch, self.num_res_blocks, self.dropout
    temb_ch = 4 * ch
    level_chs, norm, head_dim = self.block_out_channels, self.norm, self.attn_head_dim
    attn_down, attn_up = self.attn_levels or (
        (tuple(resolution // 2 ** i in self.attn_resolutions for i in range(len(level_chs))),) * 2)
    resblock = lambda cin, cout, name: ResnetBlock(cin, cout, temb_ch, dropout=dropout, name=name,
                                                   norm=norm)
    attn = lambda c, name: AttnBlock(c, name=name, head_dim=head_dim, norm=norm)
    with tf.init_scope():  # variables live outside any tf.function being traced
      self.temb_dense0 = nn.Dense(ch, temb_ch, name=f'{s}/temb/dense0')
      self.temb_dense1 = nn.Dense(temb_ch, temb_ch, name=f'{s}/temb/dense1')
      self.conv_in = nn.Conv2D(in_ch, ch, name=f'{s}/conv_in')
      # Downsampling: track the skip-connection channel counts like the original's `hs` stack.
      skip_chs, cur_ch, res = [ch], ch, resolution
      self.down = []
      for i_level, level_ch in enumerate(level_chs):
        level = {'blocks': [], 'attns': [], 'downsample': None}
        for i_block in range(nrb):
          level['blocks'].append(resblock(cur_ch, level_ch, f'{s}/down_{i_level}/block_{i_block}'))
          cur_ch = level_ch
          if attn_down[i_level]:
            level['attns'].append(attn(cur_ch, f'{s}/down_{i_level}/attn_{i_block}'))
          skip_chs.append(cur_ch)
        if i_level != len(level_chs) - 1:
          level['downsample'] = Downsample(cur_ch, name=f'{s}/down_{i_level}/downsample',
                                           with_conv=self.resamp_with_conv,
                                           padding=self.downsample_padding)
          skip_chs.append(cur_ch)
          res //= 2
        self.down.append(level)
      # Middle: 1-indexed names, attention regardless of resolution.
      self.mid_block_1 = resblock(cur_ch, cur_ch, f'{s}/mid/block_1')
      self.mid_attn_1 = attn(cur_ch, f'{s}/mid/attn_1')
      self.mid_block_2 = resblock(cur_ch, cur_ch, f'{s}/mid/block_2')
      # Upsampling: num_res_blocks + 1 blocks per level, each eating one skip.
      self.up = [None] * len(level_chs)
      for i_level in reversed(range(len(level_chs))):
        level = {'blocks': [], 'attns': [], 'upsample': None}
        for i_block in range(nrb + 1):
          in_c = cur_ch + skip_chs.pop()
          cur_ch = level_chs[i_level]
          level['blocks'].append(resblock(in_c, cur_ch, f'{s}/up_{i_level}/block_{i_block}'))
          if attn_up[i_level]:
            level['attns'].append(attn(cur_ch, f'{s}/up_{i_level}/attn_{i_block}'))
        if i_level != 0:
          level['upsample'] = Upsample(cur_ch, name=f'{s}/up_{i_level}/upsample',
                                       with_conv=self.resamp_with_conv)
          res *= 2
        self.up[i_level] = level
      assert not skip_chs
      self.norm_out = nn.GroupNorm(cur_ch, name=f'{s}/norm_out', **norm)
      self.conv_out = nn.Conv2D(cur_ch, self.out_ch, name=f'{s}/conv_out', init_scale=0.)
    self.in_ch, self.resolution = in_ch, resolution

  def __call__(self, x, t, training=False):
    """The network's output [B, S, S, out_ch] for images x [B, S, S, in_ch] at timesteps t.

    x: a float tensor, or a NumPy array / list (converted to float32). t: timesteps, a [B] (or
    [1]) tensor or array, or one scalar for the whole batch; NumPy / Python integers and
    whole-valued floats become int32, fractional ones float32 (a float tensor passes: the
    sinusoidal embedding is continuous in t, and diffusers' sigma-family schedulers evaluate
    the network between training timesteps). Wrong shapes or dtypes raise a ValueError
    that says what was expected.
    """
    x, t = self._inputs(x, t)
    self.build(x.shape[-1], x.shape[1])
    if self.compute_dtype is not None:
      x = tf.cast(x, self.compute_dtype)

    temb = nn.get_timestep_embedding(t, self.ch, flip_sin_to_cos=self.flip_sin_to_cos,
                                     freq_shift=self.freq_shift)
    temb = self.temb_dense1(nonlinearity(self.temb_dense0(temb)))
    temb = tf.cast(temb, x.dtype)

    hs = [self.conv_in(x)]
    for level in self.down:
      for i_block, block in enumerate(level['blocks']):
        h = block(hs[-1], temb, training)
        if level['attns']:
          h = level['attns'][i_block](h)
        hs.append(h)
      if level['downsample'] is not None:
        hs.append(level['downsample'](hs[-1]))

    h = hs[-1]
    h = self.mid_block_2(self.mid_attn_1(self.mid_block_1(h, temb, training)), temb, training)

    for i_level in reversed(range(len(self.ch_mult))):
      level = self.up[i_level]
      for i_block, block in enumerate(level['blocks']):
        h = block(tf.concat([h, hs.pop()], axis=-1), temb, training)
        if level['attns']:
          h = level['attns'][i_block](h)
      if level['upsample'] is not None:
        h = level['upsample'](h)
    assert not hs

    out = self.conv_out(self.norm_out(h, swish=True))
    return out if self.compute_dtype is None else tf.cast(out, tf.float32)

  def _inputs(self, x, t):
    """(x, t) converted from NumPy / Python values and checked against the static shapes.

    Tensors pass through unchanged: the checks read static shapes and dtypes only, so they
    cost nothing in a traced function (the forward pass is benchmarked against PyTorch).
    """
    res, in_ch = self.resolution, self.in_ch
    expected = (f'[B, {res}, {res}, {in_ch}] (NHWC float)' if res is not None
                else '[B, S, S, C] (NHWC float, square)')
    x = inputs.float_images(x, owner='UNet', expected=expected, rank=4)
    _, h, w, c = x.shape.as_list()
    # Height, width and channels must be known: they fix the variables and the Upsample shapes.
    if None in (h, w, c) or h != w or (res is not None and (h, c) != (res, in_ch)):
      raise ValueError(f'UNet expects images {expected}; got shape {inputs.shape_text(x.shape)}')
    return x, inputs.timesteps(t, x, owner='UNet', allow_single=True, allow_float=True)


def num_params(net):
  """Total number of trainable parameters."""
  return int(sum(v.shape.num_elements() for v in net.trainable_variables))


def tf1_name(variable):
  """A variable's TF1 checkpoint name: its name without the ``:0`` suffix."""
  name = variable.name
  return name[:-2] if name.endswith(':0') else name


def variable_names(net):
  """TF1 names of the trainable variables."""
  return [tf1_name(v) for v in net.trainable_variables]


_MODEL_CACHE = {}


def model(x, *, t, y, name, num_classes, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks,
          attn_resolutions, dropout=0., resamp_with_conv=True, training=None):
  """The original functional call style. Weights are shared across calls with the same
  ``name`` and configuration (the TF1 ``reuse=AUTO_REUSE`` behaviour).

  The original model is unconditional: ``num_classes`` must be 1 and ``y`` is ignored.
  ``training`` defaults to ``dropout > 0``, since the original applied dropout whenever
  a positive rate was passed in.
  """
  del y
  assert num_classes == 1, 'the original U-Net is unconditional (num_classes must be 1)'
  key = (name, ch, out_ch, tuple(ch_mult), num_res_blocks, tuple(attn_resolutions), resamp_with_conv)
  net = _MODEL_CACHE.get(key)
  if net is None:
    net = _MODEL_CACHE[key] = UNet(ch=ch, out_ch=out_ch, ch_mult=ch_mult,
                                   num_res_blocks=num_res_blocks,
                                   attn_resolutions=attn_resolutions, dropout=dropout,
                                   resamp_with_conv=resamp_with_conv, name=name)
  if training is None:
    training = dropout > 0
  return _call_with_dropout(net, x, t, dropout, training)


def _call_with_dropout(net, x, t, dropout, training):
  # The functional API passes dropout per call (the original's train/sample closures
  # differed only in it); set it on every block before calling.
  for m in net.submodules:
    if isinstance(m, ResnetBlock):
      m.dropout = dropout
  return net(x, t, training=training)
