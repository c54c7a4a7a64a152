"""HIST (Lim et al., CVPR 2022) end to end: the official settings per dataset.

    himl-train --config=configs/hist.py               # embedded default, ~1-2 min on a CPU
    himl-train --config=configs/hist.py:cub           # official CUB-200 settings
    himl-train --config=configs/hist.py:cars          # official Cars-196 settings
    himl-train --config=configs/hist.py:sop           # official Stanford Online Products

The dataset variants carry the official README commands and `code/train.py` defaults
(ljin0429/HIST): Adam with coupled L2 weight decay (`adam_l2`, torch's Adam); parameter
groups backbone (lr), embedding layer (lr), class distributions (lr_ds) and HGNN
(lr x lr_hgnn_factor); `StepLR(step_size=lr_decay_step epochs, gamma=0.5)` as the "step"
schedule in steps (`steps_per_epoch` of the official batch of 32, drop_last); one warm-up
epoch that trains everything but the backbone, before the schedule starts; HGNN hidden 512;
lambda_s 1; embedding 512 with the HIST head (GAP + GMP, linear, LayerNorm); one view per
sample. The official sampler is uniform random (`--IPC 0`); the nearest M-per-class batch is
one sample per class (`samples_per_class = 1`). The backbone is himl's ResNet-50 with the
HIST head. The official backbone is ImageNet-pretrained (torchvision's resnet50) with its
batch-norm statistics frozen (`freeze_bn`, set here for CUB and Cars; the README's SOP
command passes `--bn-freeze 0`), and the official augmentation (`OFFICIAL_AUGMENTATION`); himl
downloads nothing, so pass the file you have (e.g. torchvision's resnet50-0676ba61.pth):

  himl-train --config=configs/hist.py:cub --config.model.pretrained=FILE --config.data.manual_dir=D

Published targets (HIST paper, ResNet-50, 512-d, Recall@1): CUB-200 71.4, Cars-196 89.6,
SOP 81.4. Without `pretrained` the backbone trains from scratch (add
--config.model.freeze_bn=False then: frozen initial statistics are no statistics) and
the results are not comparable to these numbers.
"""

import ml_collections

from himl.config_lib import config_arg
from himl.configs import default

# Official per-dataset settings (README training commands; the rest are train.py defaults).
# steps_per_epoch: floor(training images / 32): CUB 5,864, Cars 8,054, SOP 59,551 images.
OFFICIAL = {
    "cub": dict(
        tau=32.0,
        alpha=1.1,
        epochs=40,
        lr=1.2e-4,
        lr_ds=1e-1,
        lr_hgnn_factor=5.0,
        weight_decay=5e-5,
        lr_decay_step=5,
        steps_per_epoch=183,
        bn_freeze=True,
    ),
    "cars": dict(
        tau=32.0,
        alpha=0.9,
        epochs=50,
        lr=1e-4,
        lr_ds=1e-1,
        lr_hgnn_factor=10.0,
        weight_decay=1e-4,
        lr_decay_step=10,
        steps_per_epoch=251,
        bn_freeze=True,
    ),
    "sop": dict(
        tau=16.0,
        alpha=2.0,
        epochs=60,
        lr=1e-4,
        lr_ds=1e-2,
        lr_hgnn_factor=10.0,
        weight_decay=1e-4,
        lr_decay_step=10,
        steps_per_epoch=1860,
        bn_freeze=False,  # the README's SOP command passes --bn-freeze 0
    ),
}
WARM_EPOCHS = 1  # official --warm 1: backbone frozen for the first epoch
BATCH_SIZE = 32  # official --batch-size default
# Official ResNet transforms (code/dataset/utils.py make_transform): torchvision's
# RandomResizedCrop(224) defaults (area 0.08-1, aspect 3/4-4/3) + horizontal flip, no colour
# jitter; evaluation Resize(256) + CenterCrop(224), i.e. a 224/256 = 0.875 centre crop.
OFFICIAL_AUGMENTATION = dict(
    image_size=224,
    crop_scale=(0.08, 1.0),
    crop_ratio=(0.75, 1.3333),
    color_jitter=0.0,
    eval_crop=0.875,
)


def _hist_groups(config, lr: float, lr_ds: float, lr_hgnn_factor: float) -> None:
    """The four official parameter groups as learning-rate multipliers of `lr`."""
    config.optimizer.learning_rate = lr
    config.optimizer.lr_multipliers = ml_collections.ConfigDict(
        {
            "model": 1.0,  # backbone
            "model_embedding": 1.0,  # embedding layer (its own official group, same lr)
            "loss": 1.0,
            "loss_means": lr_ds / lr,  # class distributions: lr_ds
            "loss_log_vars": lr_ds / lr,
            "loss_hgnn": lr_hgnn_factor,  # HGNN: lr x lr_hgnn_factor
        }
    )


def _dataset_base(arg: str) -> ml_collections.ConfigDict:
    """The dataset's own config (configs/<arg>.py) when it exists, else the default one."""
    try:
        module = __import__(f"himl.configs.{arg}", fromlist=["get_config"])
    except ImportError:
        config = default.get_config()
        config.data.name = arg
        return config
    return module.get_config()


def get_config(arg: str = "embedded") -> ml_collections.ConfigDict:
    arg = config_arg(arg, ("embedded", *OFFICIAL), __file__) or "embedded"
    if arg == "embedded":
        return _embedded()
    o = OFFICIAL[arg]
    config = _dataset_base(arg)
    config.loss.name = "hist"
    config.loss.hist.tau = o["tau"]
    config.loss.hist.alpha = o["alpha"]
    config.loss.hist.lambda_s = 1.0
    config.loss.hist.hgnn_hidden = 512
    config.model.embedding_dim = 512
    config.model.head = "hist"
    config.model.freeze_bn = o["bn_freeze"]  # official --bn-freeze (1: CUB, Cars; 0: SOP)
    config.data.update(OFFICIAL_AUGMENTATION)
    config.data.batch_size = BATCH_SIZE
    config.data.samples_per_class = 1
    config.data.num_views = 1
    config.optimizer.name = "adam_l2"
    config.optimizer.weight_decay = o["weight_decay"]
    _hist_groups(config, o["lr"], o["lr_ds"], o["lr_hgnn_factor"])
    config.optimizer.schedule = "step"
    config.optimizer.warmup_steps = 0
    config.optimizer.decay_every = o["lr_decay_step"] * o["steps_per_epoch"]
    config.optimizer.decay_factor = 0.5
    config.optimizer.freeze_steps = WARM_EPOCHS * o["steps_per_epoch"]
    config.optimizer.frozen_groups = ("model",)
    config.train.steps = (WARM_EPOCHS + o["epochs"]) * o["steps_per_epoch"]
    return config


def _embedded() -> ml_collections.ConfigDict:
    """HIST on the embedded Fashion-MNIST subset with the small CNN: CPU-sized."""
    return small_recipe(default.get_config())


def small_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` turned into HIST for a small network trained from scratch on a CPU: the
    official recipe (HIST head, one view, parameter groups, coupled L2, step decay) with
    rates for the small CNN. Used for the embedded default and by the hierarchy study."""
    config.loss.name = "hist"
    config.loss.hist.tau = 32.0
    config.loss.hist.alpha = 0.9
    config.loss.hist.lambda_s = 1.0
    config.loss.hist.hgnn_hidden = 64
    config.model.head = "hist"
    config.data.num_views = 1
    config.data.sampler = "m_per_class"
    config.optimizer.name = "adam_l2"
    config.optimizer.weight_decay = 1e-4
    _hist_groups(config, lr=1e-3, lr_ds=1e-1, lr_hgnn_factor=10.0)
    config.optimizer.schedule = "step"
    config.optimizer.warmup_steps = 0
    config.optimizer.decay_every = 150
    config.optimizer.decay_factor = 0.5
    config.train.steps = 450
    return config
