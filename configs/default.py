"""The main job: HiMulConE on the embedded Fashion-MNIST subset, a small CNN, CPU-sized.

    himl-train                                   # this config
    himl-train --config.loss.name=supcon --config.train.steps=100
    himl-train --config=configs/default.py:fashion_mnist --config.data.manual_dir=PATH

Arg "fashion_mnist" trains on the full Fashion-MNIST IDX files instead (same splits).
"""

import ml_collections

from himl.config_lib import config_arg, loss_config
from himl.data.defaults import data_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    arg = config_arg(arg, ("fashion_mnist",), __file__)
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Every config.data field, with its comment: himl/data/defaults.py.
    config.data = data_config("fashion_mnist" if arg == "fashion_mnist" else "embedded")
    # A partner at every level per anchor: on this data 3 points more seen-class MAP@R than
    # 16 images of 4 classes, unseen classes unchanged (experiments/hierarchy_study.py).
    config.data.sampler = "hierarchical"

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.widths = (16, 32, 64)
    config.model.embedding_dim = 64
    config.model.head = "linear"  # "linear" (L2-normalised) or "hist" (GAP+GMP, LayerNorm)
    # resnet50 only: torchvision/timm ImageNet weights (.pth / .safetensors) for the backbone,
    # and batch norm kept in inference mode (frozen statistics) while training, as HIST does.
    config.model.pretrained = ""
    config.model.freeze_bn = False
    # Compute dtype: "bfloat16" = mixed precision (params, optimizer state, losses and
    # evaluation embeddings stay float32).
    config.model.dtype = "float32"

    config.loss = loss_config("himulcone")

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 50
    config.optimizer.decay_every = 0  # "step" schedule: halve the rate every this many steps
    config.optimizer.decay_factor = 0.5
    # Per-group learning rates: learning_rate x multiplier, groups by parameter path joined
    # with "_" (longest match wins): "model", "model_embedding", "loss", "loss_means"...
    config.optimizer.lr_multipliers = ml_collections.ConfigDict({"model": 1.0, "loss": 1.0})
    config.optimizer.freeze_steps = 0  # frozen_groups get no update for this many steps
    config.optimizer.frozen_groups = ()

    config.train = ml_collections.ConfigDict()
    config.train.steps = 600
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2

    config.eval = ml_collections.ConfigDict()
    config.eval.splits = ("unseen", "seen_test")
    config.eval.query_gallery = ()  # (query split, gallery split): In-Shop style retrieval
    config.eval.ks = (1, 2, 4, 8)
    config.eval.metric = "cosine"
    config.eval.batch_size = 500
    # Evaluators (himl/eval/evaluators.py): the same ones in training and in himl-eval.
    config.eval.evaluators = ("retrieval", "query_gallery", "linear_probe")
    config.eval.every = 0  # also evaluate every this many steps (0: before and after only)
    config.eval.at_start = True  # evaluate the untrained embedding of a fresh run
    config.eval.block_size = 4096
    # R-Precision / MAP@R count at most this many same-label neighbours per query (1024:
    # bounded work, near PML's former faiss limit); 0: exact, however many there are.
    config.eval.max_r = 1024
    return config
