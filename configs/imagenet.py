"""ImageNet-1k with WordNet super-classes (seen / unseen classes).

    himl-train --config=configs/imagenet.py --config.data.manual_dir=path/to/ILSVRC2012
    himl-train --config=configs/imagenet.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"""

from himl.configs.benchmark import SAMPLER_ARGS, get_benchmark_config
from himl.train.config_lib import config_arg


def get_config(arg: str = ""):
    arg = config_arg(arg, SAMPLER_ARGS, __file__)
    return get_benchmark_config(
        "imagenet",
        sampler=arg or "hierarchical",
        eval_splits=("unseen", "seen_test"),
        ks=(1, 2, 4, 8, 16),
    )
