"""CUB-200-2011 (classes 1-100 train / 101-200 test).

    himl-train --config=configs/cub.py --config.data.manual_dir=path/to/CUB_200_2011
    himl-train --config=configs/cub.py --config.data.manual_dir=... --config.data.data_dir=DIR

Images are decoded lazily from the official files (or, with `data_dir`, from array_record
written once there by the tensorflow-datasets builder) and fed through grain with the DML
augmentations. Arg "hierarchical" / "m_per_class" picks the sampler.
"""

from himl.configs import default


def get_config(arg: str = ""):
    config = default.get_config()
    config.data.name = "cub"
    config.data.manual_dir = ""  # required: the folder of the downloaded files
    config.data.augmentation = "dml"
    config.data.sampler = arg or "m_per_class"
    config.data.image_size = 224
    config.data.batch_size = 64
    config.data.samples_per_class = 4
    config.data.num_workers = 4
    config.train.steps = 5000
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.optimizer.warmup_steps = 200
    config.eval.splits = ("test",)
    config.eval.ks = (1, 2, 4, 8, 16, 32)
    config.eval.batch_size = 128
    return config
