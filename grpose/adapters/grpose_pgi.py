"""GRPose: a ControlNet-style trainable encoder copy with a Progressive Graph Integrator (PGI)
stage at each encoder level, over a skeleton graph of the keypoints or (as released) over
kNN graphs of feature-map pixels."""
from __future__ import annotations

import torch
from diffusers import ControlNetModel

from grpose.adapters.base import AdapterOutput, PoseAdapter, PoseCondition
from grpose.graph.pgi_stages import FeaturePGIStage, PoseEncoder, SkeletonPGIStage
from grpose.graph.skeleton import build_skeleton_graph

GRAPHS = ("skeleton", "feature")


class GRPoseAdapter(PoseAdapter):
    """`ControlNetModel.from_unet` on the pose image, with one PGI stage per encoder level in
    place of (feature) or around (skeleton) the level's first ResNet block.

    Args:
        graph: "skeleton" (keypoint graph, joints -> parts -> body) or "feature" (the released
            kNN graph over feature-map pixels, with its own pose encoder).
        conditioning_channels: stages of the ControlNet conditioning embedding; None keeps
            diffusers' (16, 32, 96, 256). Sets the pose image to latent downsampling,
            2 ** (len - 1) (8 for SD), also used by the feature variant's pose encoder.
        conditioning_scale: multiplier of the residuals.
        gradient_checkpointing: recompute the copy's activations in the backward pass.
        pose_channels: (feature) pose encoder stem width, then one width per encoder level.
        knn_k: (feature) neighbours per pixel, self included.
        dropout: (feature) dropout before each stage's zero conv.
        node_dim: (skeleton) node feature width.
        splat_sigma: (skeleton) std of the splatting Gaussians, in cells of each level's grid.
    """

    def __init__(self, graph: str = "skeleton",
                 conditioning_channels: tuple[int, ...] | None = None,
                 conditioning_scale: float = 1.0, gradient_checkpointing: bool = False,
                 pose_channels: tuple[int, ...] = (128, 192, 256, 384, 512), knn_k: int = 9,
                 dropout: float = 0.0, node_dim: int = 128, splat_sigma: float = 1.0):
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        self.graph = graph
        self.conditioning_channels = conditioning_channels
        self.conditioning_scale = conditioning_scale
        self.gradient_checkpointing = gradient_checkpointing
        self.pose_channels = tuple(pose_channels)
        self.knn_k = knn_k
        self.dropout = dropout
        self.node_dim = node_dim
        self.splat_sigma = splat_sigma
        self.controlnet: ControlNetModel | None = None
        self.pose_encoder: PoseEncoder | None = None
        if graph == "feature":
            latent_factor = 2 ** (len(conditioning_channels or (16, 32, 96, 256)) - 1)
            self.pose_encoder = PoseEncoder(self.pose_channels, latent_factor)

    def attach(self, unet) -> None:
        kwargs = {}
        if self.conditioning_channels is not None:
            kwargs["conditioning_embedding_out_channels"] = tuple(self.conditioning_channels)
        self.controlnet = ControlNetModel.from_unet(unet, **kwargs)
        blocks = self.controlnet.down_blocks
        if self.graph == "feature" and len(self.pose_channels) != len(blocks) + 1:
            raise ValueError(f"pose_channels needs a stem width and {len(blocks)} level widths, "
                             f"got {self.pose_channels}")
        for level, block in enumerate(blocks):
            block.resnets[0] = self._stage(level, block.resnets[0])
        if self.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()

    def _stage(self, level: int, resnet) -> torch.nn.Module:
        cin, cout = resnet.in_channels, resnet.out_channels
        if self.graph == "skeleton":
            return SkeletonPGIStage(resnet, cin, cout, self.node_dim, self.splat_sigma)
        config = self.controlnet.config
        return FeaturePGIStage(cin, cout, self.pose_channels[level + 1],
                               resnet.time_emb_proj.in_features, config.norm_num_groups,
                               self.knn_k, self.dropout)

    def stages(self) -> list[FeaturePGIStage | SkeletonPGIStage]:
        """The PGI stage of each encoder level."""
        return [block.resnets[0] for block in self.controlnet.down_blocks]

    def _contexts(self, pose: PoseCondition, latents: torch.Tensor) -> list:
        if self.graph == "feature":  # per level (B, C_i, h_i, w_i)
            return self.pose_encoder(pose.pose_image.to(latents.device, latents.dtype))
        graph = build_skeleton_graph(pose.keypoints, pose.person_mask, latents.device)
        return [(graph, tuple(pose.pose_image.shape[-2:]))] * len(self.stages())

    def _set_contexts(self, contexts: list) -> None:
        for stage, context in zip(self.stages(), contexts):
            stage.context = context

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, pose: PoseCondition) -> AdapterOutput:
        if self.controlnet is None:
            raise RuntimeError("GRPoseAdapter.attach(unet) must be called first")
        cond = (pose.pose_image + 1) / 2  # ControlNet takes the condition in [0, 1]
        self._set_contexts(self._contexts(pose, noisy_latents))
        # Checkpointed stages run again in the backward pass and need their context then.
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        try:
            down, mid = self.controlnet(
                noisy_latents, timesteps, encoder_hidden_states=text_states,
                controlnet_cond=cond.to(noisy_latents.dtype),
                conditioning_scale=self.conditioning_scale, return_dict=False)
        finally:
            if not recompute:
                self._set_contexts([None] * len(self.stages()))
        return AdapterOutput(list(down), mid)
