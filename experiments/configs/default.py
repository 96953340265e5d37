r"""Default agents, sized for 2 CPU cores: 32x32 images, a one-block patch mixer, D = 64,
online stop-gradient target + VICReg + inverse dynamics (weight 10), 1500 steps.

  python -m experiments.train --views=mountain,forest --workdir=/tmp/sjepa

Writes checkpoints, TensorBoard events and probe.json (class, shape, size, position of each
agent beside its random-init encoder); docs/results.md gives its wall time and what it
reaches. experiments/configs/long.py is the accelerator-sized recipe.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_train_steps = 1500  # every duration below is in steps
  c.log_every = 100
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  # Steps also saved and never deleted, comma-separated (e.g. "100,300,700" for
  # experiments.emergence: the study along training); "" keeps only the last few.
  c.keep_steps = ""
  c.max_steps_per_run = -1  # > 0: stop (checkpointed) after this many steps; rerun resumes
  # How agents share the program: vmap (batched; for accelerators), lax_map (one after
  # another; faster than vmap on CPU, see benchmarks/vmap_agents.py) or auto (lax_map on
  # CPU, vmap on GPU/TPU, decided by jax.default_backend() when the step is built).
  c.agent_map = "auto"

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "mixer"  # mixer | vit | cnn
  c.model.dim = 64
  c.model.patch = 4
  c.model.width = 64
  c.model.depth = 1
  c.model.pool = "flatten"  # flatten | mean (mean pooling discards where things are)
  c.model.predictor_hidden = 128
  c.model.predictor_depth = 2
  # The networks' arithmetic: auto is bfloat16 on GPU and TPU, float32 on CPU. Parameters,
  # optimiser state, losses, probes and maps are float32 whatever this says.
  c.model.compute_dtype = "auto"

  c.objective = ml_collections.ConfigDict()
  # jepa: latent prediction + regulariser. autoencoder: pixel reconstruction with the same
  # encoder and budget (a control for alignment studies: no prediction, no views' actions).
  c.objective.kind = "jepa"
  c.objective.target = "online"  # online (stop-gradient) | ema
  c.objective.ema_decay = 0.996
  c.objective.regularizer = "vicreg"  # vicreg | sigreg | none
  c.objective.prediction_weight = 1.0
  # Inverse dynamics: predict the action from (z_t, z_t+1), so latents keep what it moves;
  # without it they keep what stays still and the predictor barely beats copying. 0 turns
  # it off.
  c.objective.inverse_weight = 10.0
  # Token prediction (I-JEPA / V-JEPA; 0 turns it off): the EMA encoder's tokens of frame
  # token_horizon predicted from frame 0's visible tokens (token_context=tokens) or from its
  # latent alone (latent), the action conditioning it across time; mask_blocks square
  # blocks of mask_block x mask_block tokens, placed where the frames change, are hidden
  # from the context and are the targets (0 blocks: every token is a target).
  c.objective.token_weight = 0.0
  c.objective.token_context = "tokens"  # tokens | latent
  c.objective.token_horizon = 1
  c.objective.mask_blocks = 0
  c.objective.mask_block = 2
  # seq-JEPA (0 turns it off): a small transformer aggregates the sample's latents, each
  # with the action to the next frame, and predicts the last frame's latent from them.
  c.objective.seq_weight = 0.0
  c.objective.variance_weight = 1.0
  c.objective.covariance_weight = 0.04
  c.objective.sigreg_weight = 0.05
  c.objective.sigreg_directions = 256

  c.data = ml_collections.ConfigDict()
  # The source: "" is the embedded world; a tfds name reads that labelled image dataset from
  # data_dir (never downloading), each agent seeing one region (views left, right, top,
  # bottom, center) of region_size of the image's side; its JEPA pairs are sub-crops of its
  # region of at least min_crop of its side. Probes and alignment use eval_split.
  c.data.dataset = ""
  c.data.data_dir = ""
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.region_size = 0.6
  c.data.min_crop = 0.5
  # A recording (a dataset of multi-camera episodes, sjepa_jax/recordings.py) is a source
  # too: each view is a camera (--views=<camera keys>), its samples are frames consecutive
  # steps of one episode with the recorded actions. Without eval_split, the last
  # holdout_fraction of train's episodes are held out (splits are by episode).
  c.data.labels = ""  # observation fields probes read, comma-separated; "": all of them
  c.data.holdout_fraction = 0.2
  c.data.flip = "none"  # none | upside_down (rows reversed: robosuite, LIBERO) | rotate180
  c.data.action_dim = 0  # set from the recording when a run starts (saved); leave 0
  c.data.batch_size = 64
  c.data.frames = 3  # frames per sample: frames - 1 prediction steps
  # A recording's frames in a sample are stride steps apart, the action between two the mean
  # of the stride recorded ones: where one step moves things by under a pixel at image_size.
  c.data.stride = 1
  c.data.image_size = 32

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.05
  c.optim.weight_decay = 1e-4
  c.optim.eps = 1e-8  # Adam's epsilon
  c.optim.grad_clip = 1.0

  c.eval = ml_collections.ConfigDict()
  c.eval.probe_train = 4000  # paired held-out states for the end-of-training probe
  c.eval.probe_test = 1000
  # Where the end-of-run probes (and the study's probes and maps) are fitted: "train", on
  # probe_train states of the training split (a recording's drawn from all its episodes),
  # scored on probe_test of the evaluation split; "eval", on the first probe_train paired
  # states of the evaluation split, scored on the next probe_test (a split smaller than
  # both: the same shares of it). The world's states are fresh draws either way.
  # docs/recordings.md, 'Where probes are fitted', measures both.
  c.eval.probe_fit = "train"
  c.eval.alignment_pairs = 512  # fixed paired states for the running CKA and ranks (>= 8 D)
  c.eval.probe_steps = 500  # most L-BFGS iterations of the class probe; it stops converged
  c.eval.seed = 1234  # the evaluation states are the same for every run and seed
  return c
