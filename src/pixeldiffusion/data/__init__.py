"""Datasets: a registry of names, loaders for real file formats, verified downloads, the built-in digits and emoji."""

from pixeldiffusion.data.imagedata import ImageData, pad_to, resize, to_model_range, to_uint8
from pixeldiffusion.data.registry import describe_datasets, load_dataset

__all__ = ["ImageData", "describe_datasets", "load_dataset", "pad_to", "resize", "to_model_range", "to_uint8"]
