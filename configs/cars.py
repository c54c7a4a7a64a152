"""Cars196 (classes 1-98 train / 99-196 test; make -> model).

    himl-train --config=configs/cars.py --config.data.manual_dir=path/to/stanford_cars
    himl-train --config=configs/cars.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"""

from himl.configs.benchmark import SAMPLER_ARGS, get_benchmark_config
from himl.train.config_lib import config_arg


def get_config(arg: str = ""):
    arg = config_arg(arg, SAMPLER_ARGS, __file__)
    return get_benchmark_config(
        "cars", sampler=arg or "m_per_class", eval_splits=("test",), ks=(1, 2, 4, 8, 16, 32)
    )
