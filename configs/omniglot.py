"""Omniglot small background sets (alphabet -> character; seen / unseen).

    himl-train --config=configs/omniglot.py --config.data.manual_dir=../shared/data/omniglot
    himl-train --config=configs/omniglot.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"""

from himl.configs.benchmark import SAMPLER_ARGS, get_benchmark_config
from himl.train.config_lib import config_arg


def get_config(arg: str = ""):
    arg = config_arg(arg, SAMPLER_ARGS, __file__)
    return get_benchmark_config(
        "omniglot",
        sampler=arg or "hierarchical",
        eval_splits=("unseen", "seen_test"),
        ks=(1, 2, 4, 8),
        image_size=64,
        eval_crop=1.0,  # characters fill the frame: resize only
        crop_scale=(0.6, 1.0),
        color_jitter=0.0,
    )
