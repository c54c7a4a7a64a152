"""Shared settings of the real-dataset configs (cub, cars, sop, inshop, imagenet, omniglot).

Images are decoded lazily from the user's downloaded files (or, with `data_dir`, from
array_record written once there by the tensorflow-datasets builder) and fed through grain
with the DML augmentations. The model is ResNet-50 with a 512-d embedding.

Pretrained backbone: every published number starts from ImageNet-pretrained ResNet-50
weights, which himl does not download. Give the file you have as FILE (torchvision's
resnet50-11ad3fa6.pth / resnet50-0676ba61.pth / resnet50-19c8e357.pth, or a timm or
Hugging Face resnet50 .safetensors):

    himl-train --config=configs/cub.py --config.data.manual_dir=DIR --config.model.pretrained=FILE

Without `pretrained` these configs train from torchvision's random initialisation: the
results are then NOT comparable to any published number. With it, the embedding head
stays freshly initialised; `--config.model.freeze_bn=True` keeps the batch-norm statistics
at the pretrained ones (as HIST's official code does).
"""

from himl.config_lib import config_arg
from himl.configs import default

SHARED_SETTINGS = True  # imported by the dataset configs, not a config itself


def get_benchmark_config(name: str, *, sampler: str, eval_splits, ks, **data):
    """The default config on dataset `name`; `data` overrides `config.data` fields."""
    config = default.get_config()
    config.data.name = name
    config.data.manual_dir = ""  # required: the folder of the downloaded files
    config.data.augmentation = "dml"
    config.data.sampler = sampler
    config.data.image_size = 224
    config.data.batch_size = 64
    config.data.samples_per_class = 4
    config.data.num_workers = 4
    config.data.update(data)
    config.model.name = "resnet50"
    config.model.embedding_dim = 512
    config.model.pretrained = ""  # ImageNet ResNet-50 file: needed to compare with papers
    config.train.steps = 5000
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.optimizer.warmup_steps = 200
    config.eval.splits = tuple(eval_splits)
    config.eval.ks = tuple(ks)
    config.eval.batch_size = 128
    # No linear probe: a logistic regression over thousands of test classes (SOP: 11,316)
    # costs more than the retrieval evaluation itself.
    config.eval.evaluators = ("retrieval", "query_gallery")
    config.eval.every = 1000
    return config


# --- Config args shared by the dataset configs (configs/<dataset>.py:ARG) ---
SAMPLER_ARGS = ("m_per_class", "hierarchical")


def apply_arg(config, arg: str):
    """`arg` of `--config=configs/<dataset>.py:ARG`: "" (as is), a sampler of
    `SAMPLER_ARGS`, or "tiny" (`tiny_variant`); anything else is a ConfigError."""
    arg = config_arg(arg, (*SAMPLER_ARGS, "tiny"), f"{config.data.name}.py")
    if arg == "tiny":
        return tiny_variant(config)
    if arg:
        config.data.sampler = arg
    return config


def tiny_variant(config):
    """A few training steps to check a download before a long run: the small CNN, 32-pixel
    images (or smaller if the config's are), 16-sample batches, 5 steps, no worker
    processes. The data are read and checked as in the full run (every listed image must
    exist); the trained model is evaluated once, on the whole evaluation split."""
    config.model.name = "small_cnn"
    config.model.widths = (8, 16)
    config.model.embedding_dim = 16
    config.model.head = "linear"
    config.data.image_size = min(config.data.image_size, 32)
    config.data.batch_size = 16
    config.data.samples_per_class = min(config.data.samples_per_class, 4)
    config.data.num_workers = 0
    config.train.steps = 5
    config.train.log_every = 1
    config.train.checkpoint_every = 5
    config.optimizer.warmup_steps = 1
    config.eval.batch_size = 256
    config.eval.every = 0
    config.eval.at_start = False  # the trained model only: one pass over the split
    return config


def get_config(arg: str = ""):
    raise ValueError("configs/benchmark.py holds shared settings; use configs/<dataset>.py")
