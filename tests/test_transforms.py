import numpy as np
import pytest

from grpose.data.transforms import PoseTransform, crop, hflip, resize_shortest


def dot_image(h, w, points):
    img = np.zeros((h, w, 3), np.uint8)
    for x, y in points:
        img[y, x] = 255
    return img


def kp_from(points):
    kp = np.full((1, 17, 3), [-1, -1, 0], np.float32)
    for j, (x, y) in enumerate(points):
        kp[0, j] = (x, y, 1)
    return kp


def brightest(img):
    y, x = np.unravel_index(img[..., 0].argmax(), img.shape[:2])
    return x, y


def test_flip_swaps_left_right_and_follows_image():
    pts = [(3, 4), (10, 2)]  # nose, left_eye
    img, kp = hflip(dot_image(8, 16, pts), kp_from(pts))
    assert img[4, 16 - 1 - 3].all() and img[2, 16 - 1 - 10].all()
    # the left eye is now the right eye, at the mirrored position
    assert tuple(kp[0, 2, :2]) == (5, 2) and kp[0, 1, 2] == 0
    assert tuple(kp[0, 0, :2]) == (12, 4)


def test_crop_moves_and_invalidates():
    pts = [(5, 5), (1, 1)]
    img, kp = crop(dot_image(10, 10, pts), kp_from(pts), 3, 3, 5, 5)
    assert img.shape == (5, 5, 3) and img[2, 2].all()
    assert tuple(kp[0, 0]) == (2, 2, 1) and tuple(kp[0, 1]) == (-1, -1, 0)
    with pytest.raises(ValueError):
        crop(img, kp, 0, 0, 6, 6)


@pytest.mark.parametrize("h,w,size", [(64, 96, 32), (40, 30, 80), (50, 50, 50)])
def test_resize_keeps_keypoints_on_image_content(h, w, size):
    rng = np.random.default_rng(h)
    pts = [(int(rng.integers(4, w - 4)), int(rng.integers(4, h - 4)))]
    img = np.zeros((h, w, 3), np.uint8)
    y, x = pts[0][1], pts[0][0]
    img[y - 2:y + 3, x - 2:x + 3] = 255  # a 5x5 block centred on the keypoint
    out, kp = resize_shortest(img, kp_from(pts), size)
    assert min(out.shape[:2]) == size
    ys, xs = np.nonzero(out[..., 0] > 0)
    weights = out[ys, xs, 0].astype(float)
    centre = (np.average(xs, weights=weights), np.average(ys, weights=weights))
    assert np.allclose(kp[0, 0, :2], centre, atol=0.6)


def test_pose_transform_centre_crop_eval_and_caption_dropout():
    rng = np.random.default_rng(0)
    pts = [(60, 20), (2, 2)]
    t = PoseTransform(resolution=32, random_crop=False)
    img, kp, cap = t(dot_image(40, 80, pts), kp_from(pts), "hello", rng)
    assert img.shape == (32, 32, 3) and cap == "hello"
    assert kp[0, 1, 2] == 0  # (2, 2) leaves the centre crop
    drop = PoseTransform(resolution=32, caption_dropout=1.0)
    assert drop(dot_image(40, 80, pts), kp_from(pts), "hello", rng)[2] == ""
    half = PoseTransform(resolution=32, caption_dropout=0.5)
    dropped = sum(half(dot_image(40, 80, pts), kp_from(pts), "x", rng)[2] == "" for _ in range(400))
    assert 150 < dropped < 250


def test_random_crop_and_flip_keep_alignment():
    rng = np.random.default_rng(1)
    t = PoseTransform(resolution=30, random_crop=True, flip_p=0.5)
    for _ in range(20):
        pts = [(int(rng.integers(10, 50)), int(rng.integers(5, 25)))]
        img, kp, _ = t(dot_image(30, 60, pts), kp_from(pts), "", rng)
        present = kp[0, :, 2] > 0
        if img.max() == 0:
            assert not present.any()
            continue
        j = int(np.flatnonzero(present)[0])
        assert j in (0,) and tuple(kp[0, j, :2].astype(int)) == brightest(img)
