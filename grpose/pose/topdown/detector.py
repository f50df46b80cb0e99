"""`TopDownDetector`: the top-down estimator as a `PoseDetector` (person boxes from the ground
truth or from another detector -> crops -> heatmaps -> joints in image pixels)."""
from __future__ import annotations

import torch
from torch import nn

from grpose.pose.detector import PoseDetector, load_pose_checkpoint
from grpose.pose.topdown.decode import decode_heatmaps, flip_average, grid_to_image
from grpose.pose.topdown.geometry import (box_to_center_size, crop_images, crop_matrix,
                                          keypoint_boxes)


class TopDownDetector(PoseDetector):
    """People per image from a top-down network, `{"keypoints": (P, 17, 3), "scores": (P,)}`.
    `takes_boxes`: `GenerationMetrics` gives it the ground-truth person boxes.

    `detector(images, boxes=None)`: `boxes` (one `(P, 4)` xyxy or `(P, 5)` xyxy + score tensor
    per image, e.g. the ground truth's) or, without them, the boxes around the people that
    `person_detector` finds (`make eval` calls `detector(images)`). A joint's confidence is its
    heatmap maximum; a person's score is its box score times the mean confidence of its joints
    above 0.2 (SimpleBaselines' rescoring). `estimate` is the same without `no_grad`.

    Args:
        network: a `TopDownPoseNet` (put in eval mode). Give this or `checkpoint`.
        checkpoint: a `TopDownModule` checkpoint.
        person_detector: any `PoseDetector` whose people give the boxes when none are passed.
        flip_test: average with the flipped crop's heatmaps.
        subpixel: "dark", "quarter" or "none" (`decode_heatmaps`).
        padding: margin around each box.
        box_threshold: joints of the person detector above this confidence make its box.
        device: where the network runs (None: wherever the images are).
    """

    def __init__(self, network: nn.Module | None = None, checkpoint: str | None = None,
                 person_detector: PoseDetector | None = None, flip_test: bool = True,
                 subpixel: str = "dark", padding: float = 1.25, box_threshold: float = 0.1,
                 device: str | None = None):
        if (network is None) == (checkpoint is None):
            raise ValueError("TopDownDetector needs exactly one of `network` and `checkpoint`")
        if checkpoint is not None:
            network = load_pose_checkpoint(checkpoint)[0]
        self.device = None if device is None else torch.device(device)
        self.network = network.eval() if device is None else network.to(self.device).eval()
        self.person_detector, self.flip_test, self.subpixel = person_detector, flip_test, subpixel
        self.padding, self.box_threshold = padding, box_threshold

    def _boxes(self, images: torch.Tensor, boxes) -> list[torch.Tensor]:
        if boxes is not None:
            if len(boxes) != len(images):
                raise ValueError(f"got boxes for {len(boxes)} images, but {len(images)} images")
            out = []
            for b in boxes:
                b = torch.as_tensor(b, dtype=torch.float32, device=images.device)
                b = b if b.ndim == 2 else b.reshape(-1, 4)  # (P, 4 or 5)
                if b.shape[-1] not in (4, 5):
                    raise ValueError(f"boxes must be (P, 4) xyxy or (P, 5) xyxy + score, got "
                                     f"{tuple(b.shape)}")
                out.append(b if b.shape[-1] == 5 else torch.cat([b, b.new_ones(len(b), 1)], -1))
            return out
        if self.person_detector is None:
            raise ValueError("TopDownDetector needs person boxes: pass boxes= (e.g. the ground "
                             "truth's) or build it with a person_detector")
        found = self.person_detector(images)
        return [torch.cat([keypoint_boxes(p["keypoints"].float(), self.box_threshold),
                           p["scores"].float()[:, None]], -1).to(images.device) for p in found]

    def estimate(self, images: torch.Tensor, boxes=None) -> list[dict[str, torch.Tensor]]:
        """People per image, differentiable in `images` (crops by `grid_sample`)."""
        per_image = self._boxes(images, boxes)
        counts = [len(b) for b in per_image]
        if sum(counts) == 0:
            return [{"keypoints": images.new_zeros(0, 17, 3), "scores": images.new_zeros(0)}
                    for _ in counts]
        device = images.device if self.device is None else self.device
        boxes = torch.cat(per_image).to(device)  # (N, 5)
        index = torch.repeat_interleave(torch.arange(len(counts), device=device),
                                        torch.tensor(counts, device=device))
        h, w = self.network.input_size
        center, size = box_to_center_size(boxes[:, :4], w / h, self.padding)
        matrices = crop_matrix(center, size, (h, w))  # (N, 2, 3)
        crops = crop_images(images.to(device), matrices, (h, w), index)  # (N, 3, h, w)
        heatmaps = self.network.to(device)(crops)["heatmaps"]  # (N, 17, h', w')
        if self.flip_test:
            heatmaps = flip_average(heatmaps, self.network(crops.flip(-1))["heatmaps"])
        xy, conf = decode_heatmaps(heatmaps, self.subpixel)
        stride = (w / heatmaps.shape[-1], h / heatmaps.shape[-2])
        people = torch.cat([grid_to_image(xy, stride, matrices), conf[..., None]], -1)
        good = (conf > 0.2).float()
        score = boxes[:, 4] * (conf * good).sum(-1) / good.sum(-1).clamp(min=1)
        return [{"keypoints": k.to(images.device), "scores": s.to(images.device)}
                for k, s in zip(people.split(counts), score.split(counts))]

    takes_boxes = True

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, boxes=None) -> list[dict[str, torch.Tensor]]:
        return self.estimate(images, boxes)
