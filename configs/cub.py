"""CUB-200-2011 (classes 1-100 train / 101-200 test).

    himl-train --config=configs/cub.py --config.data.manual_dir=path/to/CUB_200_2011
    himl-train --config=configs/cub.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/cub.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "cub", sampler="m_per_class", eval_splits=("test",), ks=(1, 2, 4, 8, 16, 32)
    )
    return apply_arg(config, arg)
