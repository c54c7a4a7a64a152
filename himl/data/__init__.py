"""Datasets: `himl.data.load(name, **data_fields)` loads one from Python in one call.

    import himl.data
    ds = himl.data.load("cub", manual_dir="~/data/CUB_200_2011")
    ds = himl.data.load("custom", source="photos/", levels=("department", "category"))
    ds.split("train").images[:8]  # [8, 224, 224, 3] uint8, decoded on demand

The data config is `config.data` at its defaults (`himl.data.defaults`, which
`configs/default.py` starts from) with `name` and the given fields set, read by
`himl.data.registry.load_dataset` (the same path `himl-train` takes).
"""

from __future__ import annotations

from himl.errors import UserError


class UnknownFieldError(UserError, TypeError):
    """A keyword of `himl.data.load` that is not a `config.data` field."""


def default_data(name: str, **data_fields):
    """`config.data` at its defaults with `name` and `data_fields` set (ConfigDict).

    Raises:
      UnknownFieldError: for a field that `config.data` does not have.
    """
    from himl.data.defaults import custom_data_config, data_config

    data = data_config(name)
    if name == "custom":  # its own section: `load("custom", source="photos/", levels=...)`
        data.custom = custom_data_config()
        for key in set(data_fields) & set(data.custom.keys()):
            data.custom[key] = data_fields.pop(key)
    unknown = sorted(set(data_fields) - set(data.keys()))
    if unknown:
        raise UnknownFieldError(
            f"himl.data.load: config.data has no field {unknown[0]!r}; "
            f"fields: {', '.join(sorted(data.keys()))}"
        )
    data.update(data_fields)
    return data


def load(name: str, **data_fields):
    """The `Dataset` that `config.data` with `name` and `data_fields` set names.

    Args:
      name: a dataset of `himl.data.registry.load_dataset` ("cub", "omniglot", ...).
      **data_fields: other `config.data` fields, e.g. `manual_dir=`, `image_size=`,
        `data_dir=` (prepare array_record there), `split_protocol=`.

    Raises:
      UnknownFieldError: for a field that `config.data` does not have.
      ConfigError: for an `image_size` other than the fixed one of an in-memory dataset
        (`IN_MEMORY_SHAPES`: "embedded" and "fashion_mnist" are 28 x 28 x 1, not resized).
    """
    from himl.data.registry import IN_MEMORY_SHAPES, check_manual_dir, load_dataset
    from himl.errors import ConfigError

    shape = IN_MEMORY_SHAPES.get(name)
    if shape and data_fields.get("image_size", shape[0]) != shape[0]:
        raise ConfigError(
            f"himl.data.load: {name!r} is held in memory at {shape[0]} x {shape[1]} x "
            f"{shape[2]} and is not resized: image_size={data_fields['image_size']} cannot "
            "apply (resize the arrays yourself, or write them out with himl.data.export and "
            "load them as 'custom')"
        )
    data_config = default_data(name, **data_fields)
    check_manual_dir(data_config)
    return load_dataset(data_config)
