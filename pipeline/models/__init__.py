"""The CLIP backbone (open_clip) and what β-CLIP and HarmoCLIP add to it."""

from pipeline.models.backbone import TINY_MODEL, create_backbone
from pipeline.models.config import ModelConfig
from pipeline.models.fine_clip import Embeddings, FineGrainedCLIP

__all__ = ["TINY_MODEL", "Embeddings", "FineGrainedCLIP", "ModelConfig", "create_backbone"]
