"""Pose-transfer methods (a source person re-rendered in a target pose), on the same
conditioning interface as the pose methods; they read the source from `PoseCondition`'s source
fields, so they train and sample on pose-transfer batches (`grpose.data.pairs.PairBatch`)."""
from grpose.methods.transfer.common import PoseOnly, keypoint_heatmaps
from grpose.methods.transfer.methods import ReferenceAttention, RePoseDM, SourceUnaligned

TRANSFER_METHODS = {
    "pose_only": PoseOnly,
    "source_unaligned": SourceUnaligned,
    "reference_attention": ReferenceAttention,
    "reposedm": RePoseDM,
}
"""Every pose-transfer method by its registry name; its configs are
configs/method/transfer_<name>.yaml (SD 1.5) and configs/method/tiny/transfer_<name>.yaml."""

__all__ = ["TRANSFER_METHODS", "PoseOnly", "RePoseDM", "ReferenceAttention", "SourceUnaligned",
           "keypoint_heatmaps"]
