"""WebDataset shards and their manifests (the storage they live on: ``pipeline.storage``)."""

from pipeline.shards.manifest import Manifest, ManifestError, ShardEntry, load_manifest

__all__ = ["Manifest", "ManifestError", "ShardEntry", "load_manifest"]
