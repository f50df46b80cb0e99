"""KB-DMGen: knowledge base (codebook over image embeddings, caption -> code classifier, FiLM of
the UNet decoder) and dynamic pose masking, built on Stable-Pose."""
from grpose.methods.kb_dmgen.build import KnowledgeBaseModule
from grpose.methods.kb_dmgen.image_encoder import OpenCLIPImageEncoder
from grpose.methods.kb_dmgen.knowledge import KnowledgeBase, load_knowledge_base
from grpose.methods.kb_dmgen.masking import dynamic_pose_mask, mask_weight
from grpose.methods.kb_dmgen.method import CodeFiLM, KBDMGen

__all__ = ["CodeFiLM", "KBDMGen", "KnowledgeBase", "KnowledgeBaseModule", "OpenCLIPImageEncoder",
           "dynamic_pose_mask", "load_knowledge_base", "mask_weight"]
