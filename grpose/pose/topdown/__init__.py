"""The top-down pose estimator (SimpleBaselines on a timm backbone, RMPG modules with part-group
supervision), its crop geometry and decoding, person-crop data, detector and mmpose import."""
from grpose.pose.topdown.data import (CocoPersonDataset, CropAugment, PersonBatch,
                                      SyntheticPersonDataset, collate_persons, person_sample)
from grpose.pose.topdown.decode import (dark_offset, decode_heatmaps, flip_average, flip_heatmaps,
                                        grid_to_image, group_targets, heatmap_argmax,
                                        heatmap_targets, quarter_offset)
from grpose.pose.topdown.detector import TopDownDetector
from grpose.pose.topdown.geometry import (box_to_center_size, crop_images, crop_matrix,
                                          invert_affine, keypoint_boxes)
from grpose.pose.topdown.mmpose import load_mmpose_checkpoint, map_mmpose_keys
from grpose.pose.topdown.module import TopDownModule
from grpose.pose.topdown.network import PART_GROUPS, TopDownPoseNet

__all__ = ["CocoPersonDataset", "CropAugment", "PART_GROUPS", "PersonBatch",
           "SyntheticPersonDataset", "TopDownDetector", "TopDownModule", "TopDownPoseNet",
           "box_to_center_size", "collate_persons", "crop_images", "crop_matrix", "dark_offset",
           "decode_heatmaps", "flip_average", "flip_heatmaps", "grid_to_image", "group_targets",
           "heatmap_argmax", "heatmap_targets", "invert_affine", "keypoint_boxes",
           "load_mmpose_checkpoint", "map_mmpose_keys", "person_sample", "quarter_offset"]
