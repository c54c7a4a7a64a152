"""DeepFashion In-Shop (category -> item -> image; train / query+gallery).

    himl-train --config=configs/inshop.py --config.data.manual_dir=path/to/inshop
    himl-train --config=configs/inshop.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"""

from himl.configs.benchmark import SAMPLER_ARGS, get_benchmark_config
from himl.train.config_lib import config_arg


def get_config(arg: str = ""):
    arg = config_arg(arg, SAMPLER_ARGS, __file__)
    config = get_benchmark_config(
        "inshop", sampler=arg or "hierarchical", eval_splits=(), ks=(1, 10, 20, 30)
    )
    config.eval.query_gallery = ("query", "gallery")  # the In-Shop protocol
    return config
