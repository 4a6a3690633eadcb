"""Data.

The dataset registry (bundled digits, image folders, file lists, torchvision sets on a user's root; never downloaded),
streaming image loading and the bundled real photos.
"""
from curvfast.data._datasets import DatasetInfo, DigitsDataset, available_datasets, get_dataset
from curvfast.data._photos import PHOTOS, photo_manifest, photo_patches, photo_sources

__all__ = ["DigitsDataset", "get_dataset", "DatasetInfo", "available_datasets", "PHOTOS", "photo_manifest",
           "photo_patches", "photo_sources"]
