"""Stanford Online Products (Ebay_train / Ebay_test; super-class -> product).

    himl-train --config=configs/sop.py --config.data.manual_dir=path/to/Stanford_Online_Products
    himl-train --config=configs/sop.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"""

from himl.configs.benchmark import SAMPLER_ARGS, get_benchmark_config
from himl.train.config_lib import config_arg


def get_config(arg: str = ""):
    arg = config_arg(arg, SAMPLER_ARGS, __file__)
    return get_benchmark_config(
        "sop",
        sampler=arg or "m_per_class",
        eval_splits=("test",),
        ks=(1, 10, 100, 1000),
        samples_per_class=2,
    )
