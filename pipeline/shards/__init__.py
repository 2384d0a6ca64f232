"""WebDataset shards, manifests and the storage they live on."""

from pipeline.shards.manifest import Manifest, ManifestError, ShardEntry, load_manifest

__all__ = ["Manifest", "ManifestError", "ShardEntry", "load_manifest"]
