"""Base config every experiment derives from: the DDPM paper's CIFAR-10 recipe.

Each experiment file calls `get_config()` here and overrides what differs. Fields are grouped
(data, model, diffusion, training, optim, sampling, eval); any of them can be set on the command
line, e.g. `--config.training.batch_size=64`, or from Python; the config is locked, so a
mistyped field is an error either way. After `pip install`, `from diffusion_jax.configs import
cifar10` imports these files.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.source = "tfds"  # tfds | folder | npz | builtin
  # tfds dataset name, or a builtin: digits, moons, swiss_roll, s_curve, gaussian_mixture
  data.name = "cifar10"
  data.path = ""  # image folder or .npz file for those sources; optional tfds data_dir for tfds
  data.split = "train"
  data.image_size = 32  # images are resized to image_size x image_size (ignored for 2D data)
  data.center_crop = False  # crop the central square before resizing (CelebA, LSUN)
  data.num_channels = 3
  data.random_flip = True  # horizontal flips, drawn on device from (seed, step)
  data.num_points = 10_000  # size of a builtin 2D toy dataset
  # class labels (read when model.num_classes > 0): tfds's ClassLabel feature of this name; a
  # folder's sub-folders; an .npz's `labels`; the digit; the moon or mixture component of a toy
  data.label_feature = "label"
  # latent diffusion: the workdir of an autoencoder run (train.py on an autoencoder_kl config, or
  # convert_diffusers.py --autoencoder); the model then trains on its scaled latents
  data.autoencoder_run = ""
  # what the latents are multiplied by; 0: the autoencoder's model.latent_scale if it has one,
  # else 1/std of the latents of the run's first batches, recorded here when the run starts
  data.latent_scale = 0.0
  # latent diffusion: a folder where the training data's latents are encoded once and read back
  # (training/latent_cache.py); "": encode every batch in the training step
  data.latent_cache = ""

  config.model = model = ml_collections.ConfigDict()
  model.name = "unet"  # unet | mlp | "package.module:ClassName" (any Flax module; README)
  model.kwargs = ml_collections.ConfigDict()  # constructor arguments of a "package.module:Class"
  model.prediction = "eps"  # what the network predicts: eps | x0 | v (parametrization.py)
  model.learned_variance = False  # also output the reverse variance (improved DDPM, L_hybrid)
  model.ch = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)  # feature-map sizes that get self-attention
  model.dropout = 0.1
  model.num_groups = 32  # GroupNorm groups; must divide every channel count
  model.resamp_with_conv = True
  model.hidden_dim = 128  # mlp only
  model.num_layers = 3  # mlp only: hidden layers
  # unet and mlp: compute dtype float32 | bfloat16 (parameters, EMA, optimizer stay float32)
  model.dtype = "float32"
  model.remat = False  # unet only: recompute each block's activations in the backward pass
  # > 0: class-conditional on labels 0..num_classes-1 (plus a null class for classifier-free
  # guidance); 0: unconditional
  model.num_classes = 0
  # autoencoder_kl (models.AutoencoderKL, latent diffusion's autoencoder) reads ch, ch_mult,
  # num_res_blocks, num_groups and dtype above, and these:
  model.latent_channels = 4  # c, the channels of the latent z
  model.mid_attention = True  # self-attention in the middle of the encoder and the decoder
  # what latents are multiplied by for diffusion, as released with the weights (diffusers'
  # scaling_factor; Stable Diffusion's 0.18215); 0: none given
  model.latent_scale = 0.0

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = (
    "linear"  # linear | quad | const | jsd | warmup10 | warmup50 | cosine | sigmoid
  )
  diffusion.num_timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128  # global batch, split over all devices
  training.grad_accum_steps = 1  # k micro-batches per update of the whole batch, to fit memory
  # steps per jitted call, less host overhead for small models; log_every, checkpoint_every,
  # sample_every and eval.every_steps must be multiples of it
  training.steps_per_call = 1
  training.num_train_steps = 800_000
  training.ema_decay = 0.9999
  training.log_every = 100
  training.checkpoint_every = 10_000
  training.keep_checkpoints = 3
  training.sample_every = 10_000  # write a sample grid every N steps; 0 disables
  training.num_sample_images = 64
  # simple: MSE on the prediction target (L_simple for eps) | min_snr: min(SNR, gamma) weighting
  # (Hang et al. 2023) | vlb: the variational bound's own weighting (losses.py)
  training.loss_weighting = "simple"
  training.min_snr_gamma = 5.0
  training.vlb_weight = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb (learned variance)
  # conditional models: probability that a label is replaced by the null class (classifier-free
  # guidance needs the unconditional model this trains; 0 trains a purely conditional one)
  training.label_dropout = 0.1
  # model autoencoder_kl: the loss per image is sum |x - x_rec| (l1) or (x - x_rec)^2 (l2) plus
  # kl_weight x KL(q(z|x) || N(0, I)) (latents.autoencoder_loss; LDM's beta is 1e-6)
  training.reconstruction_loss = "l1"
  training.kl_weight = 1e-6

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 2e-4
  optim.warmup_steps = 5000  # linear warmup from 0
  optim.decay_steps = 0  # > 0: cosine decay to 0 over this many steps after warmup; 0: constant
  optim.grad_clip = 1.0  # global-norm clipping; 0 disables
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8

  config.sampling = sampling = ml_collections.ConfigDict()
  # ancestral | ddim | dpm_solver++ | ode_euler | ode_heun | ode_adaptive | sde (see README)
  sampling.sampler = "ancestral"
  sampling.steps = 0  # 0: the sampler's default (all T steps; 100 for ODEs; 20 for dpm_solver++)
  # subsequence when steps < T: uniform | quad | leading | trailing | linspace (the last three are
  # diffusers' spacings) | "" (the sampler's default)
  sampling.spacing = ""
  sampling.eta = 0.0  # ddim only
  # ancestral: fixedlarge (sigma^2 = beta_t) | fixedsmall (posterior beta-tilde) | learned | ""
  # (learned for a model with a learned variance, else fixedlarge)
  sampling.variance = ""
  # clip the predicted x0 to [-1, 1] at each step; None: for images, not for vector data
  sampling.clip_x0 = config_dict.placeholder(bool)
  sampling.batch_size = 256
  # conditional models: classifier-free guidance scale w, eps = (1 + w) eps(x, c) - w eps(x, null);
  # 0 samples the conditional model as trained
  sampling.guidance = 0.0

  config.eval = ev = ml_collections.ConfigDict()  # evaluate.py, and train.py's quick evaluation
  # inception: the FID network (needs inception_weights) | digits: a classifier on digits data
  ev.feature_net = "inception"
  ev.inception_weights = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (see README)
  # imagenet_2012_challenge_label_map_proto.pbtxt of inception-2015-12-05.tgz: names Inception's
  # logits by ImageNet synset, so a conditional run with synset-named classes gets an accuracy
  ev.inception_label_map = ""
  ev.ref_stats = ""  # a stats .npz (mu, sigma); "" computes them from ref_split of config.data
  ev.ref_split = "train"
  ev.metrics = "fid,is,kid"  # any of fid, is, kid, bpd (evaluate.py; train.py skips bpd)
  ev.every_steps = 0  # train.py logs the metrics every N steps; 0 disables
  ev.num_samples = 1000  # samples in train.py's quick evaluation (evaluate.py: --num_samples)
  ev.sampler = ""  # quick evaluation's sampler; "" = config.sampling.sampler
  ev.steps = 0  # quick evaluation's sampler steps; 0 = config.sampling.steps
  config.lock()
  return config


def ldm_autoencoder_training(config: ml_collections.ConfigDict, batch_size: int) -> None:
  """Sets config's training to LDM's recipe for a KL autoencoder at scale: whole batches, 100k
  steps, l1 + 1e-6 KL (no perceptual or adversarial term), EMA 0.999, LDM's base rate times the
  batch size, and no quick evaluation (the diffusion run's draws samples; there are none here)."""
  config.training.update(
    batch_size=batch_size,
    grad_accum_steps=1,
    num_train_steps=100_000,
    ema_decay=0.999,
    checkpoint_every=10_000,
    sample_every=10_000,
    num_sample_images=batch_size // 2,
    reconstruction_loss="l1",
    kl_weight=1e-6,
  )
  config.optim.learning_rate = 4.5e-6 * batch_size
  config.eval.every_steps = 0
