"""DeepFashion In-Shop (category -> item -> variation -> image; train / query+gallery).

    himl-train --config=configs/inshop.py --config.data.manual_dir=path/to/inshop
    himl-train --config=configs/inshop.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/inshop.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "inshop", sampler="hierarchical", eval_splits=(), ks=(1, 10, 20, 30)
    )
    config.eval.query_gallery = ("query", "gallery")  # the In-Shop protocol
    config.data.label_layout = "official"  # [category, item, variation, image]
    return apply_arg(config, arg)
