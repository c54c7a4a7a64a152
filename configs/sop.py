"""Stanford Online Products (Ebay_train / Ebay_test; super-class -> product).

    himl-train --config=configs/sop.py --config.data.manual_dir=path/to/Stanford_Online_Products
    himl-train --config=configs/sop.py --config.data.manual_dir=... --config.data.data_dir=DIR

Published ResNet-50 / 512-d target on this protocol: HIST R@1 81.4 (Lim et al., CVPR 2022;
configs/hist.py:sop). Comparable only with --config.model.pretrained=IMAGENET_RESNET50
(see configs/benchmark.py); without it the backbone trains from scratch.

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
