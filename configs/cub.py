"""CUB-200-2011 (classes 1-100 train / 101-200 test).

    himl-train --config=configs/cub.py --config.data.manual_dir=path/to/CUB_200_2011
    himl-train --config=configs/cub.py --config.data.manual_dir=... --config.data.data_dir=DIR

Published ResNet-50 / 512-d target on this protocol: HIST R@1 71.4 (Lim et al., CVPR 2022;
configs/hist.py:cub). Comparable only with --config.model.pretrained=IMAGENET_RESNET50
(see configs/benchmark.py); without it the backbone trains from scratch.

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/cub.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "cub", sampler="m_per_class", eval_splits=("test",), ks=(1, 2, 4, 8, 16, 32)
    )
    return apply_arg(config, arg)
