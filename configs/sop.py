"""Stanford Online Products (Ebay_train / Ebay_test; super-class -> product).

    himl-train --config=configs/sop.py --config.data.manual_dir=path/to/Stanford_Online_Products
    himl-train --config=configs/sop.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/sop.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "sop",
        sampler="m_per_class",
        eval_splits=("test",),
        ks=(1, 10, 100, 1000),
        samples_per_class=2,
    )
    return apply_arg(config, arg)
