"""Moved: image sources are the package `tfp_ae.data` since 0.2.0 (one module per source kind).

This module re-exports the names it used to define, so `from tfp_ae.sources import open_source`
keeps working; new code imports from `tfp_ae.data`.
"""
from tfp_ae.data import (  # noqa: F401
                         CROPS,
                         IMAGE_EXTENSIONS,
                         MASK_SUFFIX,
                         SAMPLE_BYTES,
                         SHARD_SCHEMA,
                         SHARDS_INFO,
                         SPLITS,
                         Geometry,
                         Source,
                         Split,
                         array_split,
                         convert,
                         decode_image,
                         load_masks,
                         open_source,
                         scan_images,
)
