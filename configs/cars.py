"""Cars196 (classes 1-98 train / 99-196 test; make -> model).

    himl-train --config=configs/cars.py --config.data.manual_dir=path/to/stanford_cars
    himl-train --config=configs/cars.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/cars.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "cars", sampler="m_per_class", eval_splits=("test",), ks=(1, 2, 4, 8, 16, 32)
    )
    return apply_arg(config, arg)
