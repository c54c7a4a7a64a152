"""The defaults of `config.data`: the section `configs/default.py` starts from and
`himl.data.load` fills in, so the data package needs nothing above it in the flow.

    data = data_config("cub")          # every field at its default, name set
    data.custom = custom_data_config()  # the extra section of name="custom"
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def data_config(name: str = "embedded") -> ml_collections.ConfigDict:
    """`config.data` with every field at its default and `name` set."""
    data = ml_collections.ConfigDict()
    data.name = name
    data.manual_dir = ""  # folder of the IDX files for name=fashion_mnist
    data.batch_size = 64  # samples per step (global, over all devices)
    data.samples_per_class = 16
    data.num_views = 2  # augmented views per sample (instance-level positives)
    data.sampler = "m_per_class"  # or "hierarchical" (a partner at every level)
    data.augmentation = "pad_crop"  # in-memory default; "dml" for image datasets
    data.train_split = "train"  # "train_no_val" to select models on "val"
    # Image datasets (himl.data.real): decoded lazily, read through grain.
    data.data_dir = ""  # non-empty: prepare array_record (TFDS builder) here once
    data.image_size = 224  # side of the square crops fed to the model
    data.eval_crop = 0.875  # evaluation: resize to image_size / eval_crop, centre crop
    data.crop_scale = (0.16, 1.0)  # random resized crop: area fraction range
    data.crop_ratio = (0.75, 1.3333)  # random resized crop: aspect ratio range
    data.color_jitter = 0.3  # brightness/contrast/saturation factor range 1 +- this
    data.val_fraction = 0.2  # last fraction of train classes carved out as "val"
    data.num_workers = 0  # grain worker processes decoding + augmenting batches
    # Reader choices (himl.data.real.READER_OPTIONS); empty = the dataset's default.
    data.label_layout = ""  # inshop: "official" (seed code) | "gender"
    data.split_protocol = ""  # omniglot: "characters" | "alphabets" | "held_out_alphabets"
    # inshop split_protocol: "official" | "held_out_categories"
    data.class_list = ""  # imagenet: a file of WordNet ids to read alone (e.g. ImageNet-100)
    return data


def custom_data_config(protocol: str = "dml") -> ml_collections.ConfigDict:
    """`config.data.custom`: where the data is and how it is split."""
    return ml_collections.ConfigDict(
        {
            "source": "",  # manifest (.csv/.tsv/.jsonl), image-folder tree or .npz
            "levels": (),  # label columns / level names, coarse to fine (default: all)
            "path_column": "path",
            "split_column": "split",  # used when the manifest has it
            "unique_labels": False,  # True: "a/other" and "b/other" are different labels
            "channels": 3,  # 1 decodes image files as grayscale
            "protocol": protocol,  # when the source has no split column: dml | seen_unseen
            # The level whose classes are divided: an index (-1: the finest) or a level name
            # (typed `object` so that `--config.data.custom.split_level=class` is a name).
            "split_level": config_dict.FieldReference(-1, field_type=object),
            "test_fraction": 0.5,  # dml: test classes; seen_unseen: unseen classes per group
            "seen_test_fraction": 0.2,  # seen_unseen: held-out images of each seen class
            "split_seed": 0,  # the split does not change with config.seed
        }
    )
