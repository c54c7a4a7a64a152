"""`load_dataset(config.data)`: the data source a config names."""

from __future__ import annotations

from himl.data.dataset import Dataset
from himl.data.embedded import load_embedded, load_fashion_mnist


def load_dataset(data_config) -> Dataset:
    if data_config.name == "embedded":
        return load_embedded()
    if data_config.name == "fashion_mnist":
        return load_fashion_mnist(data_config.manual_dir)
    from himl.data.real import READERS, load_real

    if data_config.name in READERS:
        return load_real(data_config)
    valid = ", ".join(("embedded", "fashion_mnist", *READERS))
    raise ValueError(f"unknown dataset {data_config.name!r}; valid: {valid}")
