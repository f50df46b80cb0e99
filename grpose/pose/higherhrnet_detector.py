"""The field's detector: HigherHRNet-W48 (AE, UDP, flip test) as mmpose 0.29 runs it with the
COCO UDP test config, the papers' evaluation protocol, from Human-Art's mmpose checkpoint."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from grpose.data.skeletons import COCO17_FLIP, NUM_JOINTS
from grpose.pose.associative import decode_associative, udp_input_size
from grpose.pose.detector import PoseDetector
from grpose.pose.higherhrnet import IMAGENET_MEAN, IMAGENET_STD, HigherHRNet, average_stages

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def udp_warp(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mmpose's UDP resize of `(B, C, H, W)` to `size (h, w)`: corners aligned along the short
    side (isotropic scale `(short' - 1) / (short - 1)`, no translation), bilinear, zeros outside."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    scale = (size[1] - 1) / (w - 1) if w < h else (size[0] - 1) / (h - 1)
    ys = torch.arange(size[0], device=images.device, dtype=torch.float32) / scale
    xs = torch.arange(size[1], device=images.device, dtype=torch.float32) / scale
    grid = torch.stack(torch.meshgrid(2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1,
                                      indexing="xy"), -1)  # (h', w', 2)
    grid = grid[None].expand(len(images), -1, -1, -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class HigherHRNetDetector(PoseDetector):
    """Human-Art's HigherHRNet-W48 with mmpose 0.29's COCO UDP test settings (`decode_associative`).

    Images `(B, 3, H, W)` in [-1, 1] -> one `{"keypoints": (P, 17, 3), "scores": (P,)}` per image,
    in input pixels, sorted by score, no score threshold (the papers keep every person).
    The network runs batched on `device`, the flipped images in the same batch; the grouping
    runs on the CPU.

    Args:
        checkpoint: the mmpose `.pth` (`higherhrnet_w48_humanart_512x512_udp.pth`); or give
            `network`.
        flip_test: average the maps with the flipped image's (mmpose's `test_cfg`; the
            defaults here are the COCO UDP config the papers load).
        adjust: mmpose's `adjust`: sub-pixel peaks.
        refine: mmpose's `refine`: fill missing joints of found people from the maps.
        max_people: mmpose's `max_num_people`.
        detection_threshold: mmpose's `detection_threshold`.
        tag_threshold: mmpose's `tag_threshold`.
        dark_in_place: True reproduces mmpose on the CPU (HumanSD's runs: refine fills almost
            nothing); False its CUDA behaviour (Stable-Pose's and GRPose's runs).
        legacy_input: the papers' scripts' input: the image x255 truncated to uint8 and its RGB
            read as BGR; False feeds the network RGB as it was trained.
        device: where the network runs (None: where the images are; "auto": CUDA if there is
            one, else the CPU); the people come back on the images' device.
        dtype: the network's precision ("float32", "bfloat16", "float16").
        network: a `HigherHRNet` instead of `checkpoint`.
    """

    def __init__(self, checkpoint: str | None = None, flip_test: bool = True, adjust: bool = True,
                 refine: bool = True, max_people: int = 30, detection_threshold: float = 0.1,
                 tag_threshold: float = 1.0, dark_in_place: bool = False,
                 legacy_input: bool = False, device: str | None = None, dtype: str = "float32",
                 network: HigherHRNet | None = None):
        if (network is None) == (checkpoint is None):
            raise ValueError("HigherHRNetDetector needs exactly one of `checkpoint` and `network`")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.network = (network or HigherHRNet.from_mmpose(checkpoint)).eval()
        self.network.requires_grad_(False).to(DTYPES[dtype])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            self.network.to(self.device)
        self.flip_test, self.legacy_input, self.dtype = flip_test, legacy_input, DTYPES[dtype]
        self.decode_options = dict(adjust=adjust, refine=refine, max_people=max_people,
                                   detection_threshold=detection_threshold,
                                   tag_threshold=tag_threshold, dark_in_place=dark_in_place)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network input: UDP-resized, ImageNet-normalised `(B, 3, h, w)` (h, w multiples
        of 64, short side 512) from images in [-1, 1]."""
        x = ((images.float() + 1) / 2).clamp(0, 1)
        size = udp_input_size(tuple(images.shape[-2:]))
        if self.legacy_input:  # uint8 truncation, RGB read as BGR, an 8-bit warp
            # (+1e-4: an image read from an 8-bit file keeps its levels through [-1, 1] and back)
            x = udp_warp(torch.floor(x * 255 + 1e-4).flip(1), size).round().clamp(0, 255) / 255
        else:
            x = udp_warp(x, size)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return (x - mean) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def aggregate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps `(B, 17, h/2, w/2)` (stages then flips averaged) and tags
        `(B, 17, h/2, w/2, T)` (T = 2 with flip test: original, flipped back) of the input."""
        batch = torch.cat([x, x.flip(-1)]) if self.flip_test else x
        low, high = (o.float() for o in self.network(batch.to(self.dtype)))
        size = high.shape[-2:]
        views = [(low[:len(x)], high[:len(x)])]
        if self.flip_test:
            flip = torch.as_tensor(COCO17_FLIP, device=x.device)
            views.append((low[len(x):].flip(-1)[:, torch.cat([flip, flip + NUM_JOINTS])],
                          high[len(x):].flip(-1)[:, flip]))
        heatmaps = sum(average_stages(lo, hi) for lo, hi in views) / len(views)
        tags = torch.stack([F.interpolate(lo[:, NUM_JOINTS:], size=size, mode="bilinear",
                                          align_corners=True) for lo, _ in views], -1)
        return heatmaps, tags

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        device = images.device if self.device is None else self.device
        self.network.to(device)
        heatmaps, tags = self.aggregate(self.prepare(images.to(device)))
        heatmaps, tags = heatmaps.cpu(), tags.cpu()
        people = []
        for hm, tg in zip(heatmaps, tags):
            keypoints, scores = decode_associative(hm, tg, tuple(images.shape[-2:]),
                                                   **self.decode_options)
            people.append({"keypoints": torch.from_numpy(keypoints).to(images.device),
                           "scores": torch.from_numpy(scores).to(images.device)})
        return people
