"""Pose methods: one package or file per method, one interface (`PoseMethod` ->
`UNetConditioning`), and the registry of every method by name."""
from grpose.methods.base import NoPose, PoseMethod, UNetConditioning
from grpose.methods.controlnet import ControlNet
from grpose.methods.grpose import GRPoseFeature, GRPoseSkeleton
from grpose.methods.humansd import HumanSD
from grpose.methods.kb_dmgen import KBDMGen
from grpose.methods.stable_pose import StablePose
from grpose.methods.t2i_adapter import T2IAdapter
from grpose.methods.transfer import (TRANSFER_METHODS, PoseOnly, ReferenceAttention, RePoseDM,
                                     SourceUnaligned)
from grpose.methods.weights import load_method, load_method_weights, save_method

METHODS: dict[str, type[PoseMethod]] = {
    "no_pose": NoPose,
    "controlnet": ControlNet,
    "grpose_skeleton": GRPoseSkeleton,
    "grpose_feature": GRPoseFeature,
    "stable_pose": StablePose,
    "kb_dmgen": KBDMGen,
    "t2i_adapter": T2IAdapter,
    "humansd": HumanSD,
}
"""Every pose method by its registry name (the name of its YAML under configs/method/). The
pose-transfer methods, which need a source person, are apart: `TRANSFER_METHODS`."""
ALL_METHODS: dict[str, type[PoseMethod]] = {**METHODS, **TRANSFER_METHODS}
"""Both registries in one: every method a config, a checkpoint or a bundle may name."""
CLASS_PATHS = {f"grpose.methods.{cls.__name__}": name for name, cls in ALL_METHODS.items()}


def method_class(name: str) -> type[PoseMethod]:
    """The method class registered as `name` (a pose or a pose-transfer method)."""
    if name not in ALL_METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(ALL_METHODS)}")
    return ALL_METHODS[name]


def method_from_config(path: str, **overrides) -> PoseMethod:
    """The method of a method config (`model.init_args.method` of configs/method/...yaml), built
    with its init_args updated by `overrides`. Only registered classes are built."""
    import yaml
    with open(path) as f:
        spec = (yaml.safe_load(f) or {}).get("model", {}).get("init_args", {}).get("method")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{path}: no model.init_args.method.class_path")
    name = CLASS_PATHS.get(spec["class_path"])
    if name is None:
        raise ValueError(f"{path}: model.init_args.method.class_path {spec['class_path']!r} is not "
                         f"a registered method ({sorted(CLASS_PATHS)})")
    return method_class(name)(**{**(spec.get("init_args") or {}), **overrides})


__all__ = ["ALL_METHODS", "METHODS", "TRANSFER_METHODS", "ControlNet", "GRPoseFeature", "GRPoseSkeleton",
           "HumanSD", "KBDMGen", "NoPose", "PoseMethod", "PoseOnly", "RePoseDM",
           "ReferenceAttention", "SourceUnaligned", "StablePose", "T2IAdapter",
           "UNetConditioning", "load_method", "load_method_weights", "method_class",
           "method_from_config", "save_method"]
