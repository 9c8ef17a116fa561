"""MetaNAS (Elsken et al., CVPR 2020) on Omniglot at the paper's network size: 4 cells, 28
channels, 5-way K-shot (the config argument, default 1), 28x28 images with rotations as extra
classes, meta-batch 10, 30,000 meta-steps of which the first 15,000 adapt the weights only
(warm-up), inner Adam lr 5e-3, meta-training episodes of 15 shots adapted on minibatches of
20, the temperature annealed linearly from 1 to 0.05 within each task, and the MetaNAS
code's few-shot ops (``FEWSHOT_PRIMITIVES``): its Omniglot setting (its cells have 3
intermediate nodes, these DARTS cells 4). Beside it: Reptile with Conv-4 (64 filters) and
with a fixed random cell; 600 meta-test episodes. Omniglot must be prepared first (nothing
downloads): ``tfds build omniglot --file_format=array_record`` (see README), then

    python experiments/meta_train.py --config=configs/metanas_omniglot.py \
        --workdir=/tmp/metanas_omniglot

This is a GPU-sized run (the supernet's programs take minutes to compile and seconds per
meta-step on CPU).
"""

from nas_jax.meta.metanas_train import metanas_config
from nas_jax.spaces.darts import FEWSHOT_PRIMITIVES


def get_config(arg=None):
    c = metanas_config()
    c.dataset.name = "omniglot"
    c.dataset.rotations = True
    c.dataset.valid_classes = 400
    c.episodes.ways = 5
    c.episodes.shots = int(arg or 1)
    c.episodes.queries = 5
    c.episodes.meta_batch = 10
    c.episodes.train_shots = 15
    c.learner.channels = 28
    c.learner.num_cells = 4
    c.learner.stem_multiplier = 3
    c.learner.primitives = FEWSHOT_PRIMITIVES
    c.learner.conv_channels = 64
    c.learner.inner_lr_w = 5e-3
    c.learner.inner_lr_alpha = 5e-3
    c.learner.inner_batch = 20
    c.temperature.end = 0.05
    c.temperature.mode = "linear"
    c.temperature.over = "inner_steps"
    c.warmup_steps = 15000
    c.steps = 30000
    c.log_every = 100
    c.valid_every = 1000
    c.checkpoint_every = 1000
    c.valid.episodes = 200
    c.test.episodes = 600
    return c
