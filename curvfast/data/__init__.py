"""Data.

The dataset registry (bundled digits, image folders, file lists, torchvision sets on a user's root; never downloaded),
streaming image loading and the bundled real photos.
"""
from curvfast.data._datasets import (DatasetInfo, DigitsDataset, available_datasets, class_names, get_dataset,
                                     sample_paths)
from curvfast.data._files import check_split, printable_path
from curvfast.data._photos import PHOTOS, photo_manifest, photo_patches, photo_sources

__all__ = ["DigitsDataset", "get_dataset", "DatasetInfo", "available_datasets", "sample_paths", "class_names",
           "printable_path", "check_split", "PHOTOS", "photo_manifest", "photo_patches", "photo_sources"]
