"""A seconds-long variant of the default for tests and notebooks."""

from himl.config_lib import config_arg
from himl.configs import default


def get_config(arg: str = ""):
    config = default.get_config(config_arg(arg, ("fashion_mnist",), __file__))
    config.data.sampler = "m_per_class"  # batches whose shape the tests count on
    config.data.batch_size = 32
    config.data.samples_per_class = 8
    config.model.widths = (8, 16)
    config.model.embedding_dim = 16
    config.optimizer.warmup_steps = 2
    config.train.steps = 12
    config.train.log_every = 4
    config.train.checkpoint_every = 4
    config.eval.splits = ("unseen",)
    return config
