"""MetaNAS (Elsken et al., "Meta-Learning of Neural Architectures for Few-Shot Learning",
CVPR 2020) on the offline `glyphs` few-shot dataset (letters of many scripts rendered from the
DejaVu fonts matplotlib ships; meta-train and meta-test scripts disjoint), 5-way K-shot,
beside Reptile with the standard Conv-4 network and with a fixed random DARTS cell, all
meta-trained on the same episodes and scored on the same 600 meta-test episodes
(mean +- 95% CI, the T-NAS protocol):

    python experiments/meta_train.py --config=configs/metanas_glyphs.py \
        --workdir=/tmp/metanas_1shot
    python experiments/meta_train.py --config=configs/metanas_glyphs.py:5 \
        --workdir=/tmp/metanas_5shot

The config argument is the number of shots (default 1). This default is sized to finish in
under 15 minutes on 2 CPU cores (1-shot, all three learners, no persistent compilation
cache: see docs/results.md), far smaller than the paper: 3 cells of 8 channels (the paper's
4 cells / 28 channels are in ``configs/metanas_omniglot.py``), 3 inner steps, meta-batch 2,
60 meta-steps and 100 meta-test episodes; the supernet runs its edges as scans
(``learner.edge_execution``), which compiles ~5x faster on CPU. Meta-training episodes have
10 shots per class and each inner step adapts on a random minibatch of 10 of them
(Reptile's protocol; the MetaNAS code meta-trains on 15); meta-validation and meta-test
episodes have the test shots. At this length the adapted mixtures stay near uniform (see
docs/results.md). The T-NAS protocol's 600 episodes and a longer run:
``--config.test.episodes=600 --config.steps=2000 --config.episodes.meta_batch=5``. Inner
Adam betas (0, 0.999) and the alpha learning rate 1e-3 follow the MetaNAS code, as do the
meta learning rates (1.0 for the weights, 0.6 for alpha); the weights adapt at 1e-2.
"""

from nas_jax.meta.metanas_train import metanas_config


def get_config(arg=None):
    c = metanas_config()
    c.dataset.name = "glyphs"
    c.dataset.rotations = False
    c.episodes.ways = 5
    c.episodes.shots = int(arg or 1)
    c.episodes.queries = 5
    c.episodes.meta_batch = 2
    c.learner.channels = 8
    c.learner.num_cells = 3
    c.learner.stem_multiplier = 3
    # Conv-4 with 87 filters: 207,587 meta-learned weights, close to MetaNAS's 208,365.
    c.learner.conv_channels = 87
    c.learner.inner_steps = 3
    # Reptile's protocol (and the MetaNAS code's): meta-train on more shots than the test
    # episodes have, adapting on random minibatches of them.
    c.episodes.train_shots = 10
    c.learner.inner_batch = 10
    # At this short length the weights must adapt faster than the MetaNAS code's 1e-3: in 600
    # Conv-4 meta-steps, inner lr 1e-3 stayed at chance (0.23 meta-validation accuracy)
    # while 1e-2 reached 0.37 (docs/results.md). Reptile's meta step anneals linearly to 0.
    c.learner.inner_lr_w = 0.01
    c.learner.meta_lr_schedule = "linear"
    c.baselines = ("conv4", "random_cell")
    c.steps = 60
    c.log_every = 20
    c.valid_every = 20
    c.checkpoint_every = 20
    c.valid.episodes = 20
    c.test.episodes = 100
    c.test.chunk = 20
    return c
