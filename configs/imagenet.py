"""ImageNet-1k with WordNet super-classes (seen / unseen classes).

    himl-train --config=configs/imagenet.py --config.data.manual_dir=path/to/ILSVRC2012
    himl-train --config=configs/imagenet.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/imagenet.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "imagenet",
        sampler="hierarchical",
        eval_splits=("unseen", "seen_test"),
        ks=(1, 2, 4, 8, 16),
    )
    return apply_arg(config, arg)
