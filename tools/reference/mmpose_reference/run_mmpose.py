"""Run in the throwaway mmpose 0.29 venv (docs/benchmarks.md, the detector section, says how to build it), never in grpose's:

    REF/bin/python run_mmpose.py decode IN.npz OUT.npz   # HeatmapParser + back-projection + order
    REF/bin/python run_mmpose.py infer W.pth IMG.npy OUT.npz   # the papers' call on a uint8 image

`IN.npz`: heatmaps (1, 17, h, w), tags (1, 17, h, w, T), image_size (H, W), adjust, refine,
device_copy (mmpose on CUDA: the dark adjust gets a copy of the heatmaps). Writes keypoints
(P, 17, 3), scores (P,) and, for `infer`, the aggregated maps mmpose decoded and the head outputs.
"""
import os
import sys

import numpy as np

np.int, np.float, np.bool = int, float, bool  # mmpose 0.29 still uses the removed aliases
import torch  # noqa: E402
import mmpose.core.post_processing.group as group  # noqa: E402
from mmcv import Config  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.py')
torch.set_num_threads(1)


def device_copy():
    dark = group.post_dark_udp
    group.post_dark_udp = lambda coords, heatmaps, *a: dark(coords, heatmaps.clone(), *a)


def decode(src, dst):
    from mmpose.core.evaluation import get_group_preds
    from mmpose.core.post_processing import oks_nms
    from mmpose.datasets.pipelines.bottom_up_transform import _get_multi_scale_size
    d = np.load(src)
    if d['device_copy'].item():
        device_copy()
    parser = group.HeatmapParser(Config.fromfile(CONFIG).model.test_cfg)
    hm, tg = torch.from_numpy(d['heatmaps']), torch.from_numpy(d['tags'])
    grouped, scores = parser.parse(hm, tg, bool(d['adjust']), bool(d['refine']))
    h, w = (int(v) for v in d['image_size'])
    _, center, scale = _get_multi_scale_size(np.zeros((h, w, 3)), (512, 512), 1, 1, use_udp=True)
    preds = get_group_preds(grouped, center, scale, [hm.size(3), hm.size(2)], use_udp=True)
    people = [{'keypoints': p[:, :3], 'score': s, 'area': 1.0} for p, s in zip(preds, scores)]
    keep = oks_nms(people, 1.0, None) if people else []
    np.savez(dst, keypoints=np.array([people[i]['keypoints'] for i in keep],
                                     np.float32).reshape(-1, 17, 3),
             scores=np.array([people[i]['score'] for i in keep], np.float32))


def infer(weights, image, dst):
    from mmpose.apis import inference_bottom_up_pose_model, init_pose_model
    model = init_pose_model(CONFIG, weights, device='cpu')
    seen, outs = {}, []
    parse = group.HeatmapParser.parse

    def spy(self, heatmaps, tags, adjust=True, refine=True):
        seen.update(agg_heatmaps=heatmaps.clone().numpy(), agg_tags=tags.clone().numpy())
        return parse(self, heatmaps, tags, adjust, refine)
    group.HeatmapParser.parse = spy
    model.keypoint_head.register_forward_hook(
        lambda m, i, o: outs.append([t.detach().numpy().copy() for t in o]))
    people, _ = inference_bottom_up_pose_model(model, np.load(image), pose_nms_thr=1.0)
    np.savez(dst, keypoints=np.array([p['keypoints'] for p in people],
                                     np.float32).reshape(-1, 17, 3),
             scores=np.array([p['score'] for p in people], np.float32),
             out0=outs[0][0], out1=outs[0][1], **seen)


if __name__ == '__main__':
    what, *args = sys.argv[1:]
    if '--device-copy' in args:
        args.remove('--device-copy')
        device_copy()
    {'decode': decode, 'infer': infer}[what](*args)
