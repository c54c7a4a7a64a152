"""`load_dataset(config.data)`: the data source a config names, and the input it feeds."""

from __future__ import annotations

from himl.data.dataset import Dataset
from himl.data.embedded import load_embedded, load_fashion_mnist
from himl.data.real import READERS
from himl.errors import ConfigError, check_choice

IN_MEMORY_SHAPES = {"embedded": (28, 28, 1), "fashion_mnist": (28, 28, 1)}
# Every dataset name `config.data.name` accepts (the readers' table included).
DATASETS = (*IN_MEMORY_SHAPES, "custom", *READERS)


def load_dataset(data_config) -> Dataset:
    if data_config.name == "embedded":
        return load_embedded()
    if data_config.name == "fashion_mnist":
        return load_fashion_mnist(data_config.manual_dir)
    if data_config.name == "custom":
        from himl.data.custom import load_from_config

        return load_from_config(data_config)
    from himl.data.real import load_real

    if data_config.name in READERS:
        return load_real(data_config)
    check_choice(data_config.name, DATASETS, "dataset", error=ValueError)


def check_manual_dir(data_config) -> None:
    """ConfigError when a downloaded dataset has no `manual_dir` (the config checks and
    `himl.data.load` call it)."""
    if data_config.name in READERS and not data_config.manual_dir:
        raise ConfigError(
            f"config.data.manual_dir must point at the downloaded {data_config.name} files "
            f"(--config.data.manual_dir=PATH); nothing is downloaded"
        )


def input_spec(data_config) -> tuple[tuple[int, int, int], float]:
    """`((H, W, C), crop_fraction)` of the images a model of `config.data` was fed, without
    loading the data: new images are resized (shorter side to `H / crop_fraction`) and
    centre-cropped to `H x W` the way its evaluation images were."""
    if data_config.name in IN_MEMORY_SHAPES:
        return IN_MEMORY_SHAPES[data_config.name], 1.0
    if data_config.name == "custom":
        from himl.data.custom import input_shape

        shape = input_shape(data_config)
        in_memory = str(data_config.custom.source).lower().endswith(".npz")
        return shape, 1.0 if in_memory else data_config.eval_crop
    from himl.data.real import CHANNELS

    size = data_config.image_size
    return (size, size, CHANNELS.get(data_config.name, 3)), data_config.eval_crop
