"""Omniglot (alphabet -> character; seen / unseen characters or unseen alphabets).

    himl-train --config=configs/omniglot.py --config.data.manual_dir=../shared/data/omniglot
    himl-train --config=configs/omniglot.py --config.data.manual_dir=... --config.data.data_dir=DIR

Shared settings: configs/benchmark.py. Arg "hierarchical" / "m_per_class" picks the sampler.
"tiny" (`--config=configs/omniglot.py:tiny`): a seconds-long check of the files.
"""

from himl.configs.benchmark import apply_arg, get_benchmark_config


def get_config(arg: str = ""):
    config = get_benchmark_config(
        "omniglot",
        sampler="hierarchical",
        eval_splits=("unseen", "seen_test"),
        ks=(1, 2, 4, 8),
        image_size=64,
        eval_crop=1.0,  # characters fill the frame: resize only
        crop_scale=(0.6, 1.0),
        color_jitter=0.0,
        split_protocol="characters",  # "alphabets" (needs images_evaluation), "held_out_alphabets"
    )
    return apply_arg(config, arg)
