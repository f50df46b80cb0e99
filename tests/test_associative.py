"""`decode_associative` on hand-made maps: the grouping and coordinates mmpose 0.29's COCO UDP
decoding gives, worked out by hand or step by step from the algorithm."""
import numpy as np
import pytest

from grpose.pose.associative import decode_associative, udp_scale

H = W = 32  # heatmap size; image 64 x 64 (stride 2): x_img = x * 63 / 31
F64 = 63 / 31


def maps(h=H, w=W):
    return np.zeros((17, h, w), np.float32), np.zeros((17, h, w, 2), np.float32)


def put(heatmaps, tags, joint, x, y, value, tag):
    heatmaps[joint, y, x] = value
    tags[joint, y, x] = tag


def two_people(missing=()):
    """Person A (value 0.9, tag 0) with joint j at (3 + j, 4); B (0.6, tag 5) at (3 + j, 20)."""
    hm, tg = maps()
    for j in range(17):
        if j not in missing:
            put(hm, tg, j, 3 + j, 4, 0.9, 0.0)
        put(hm, tg, j, 3 + j, 20, 0.6, 5.0)
    return hm, tg


def test_two_people_grouped_at_their_peaks_and_sorted_by_score():
    hm, tg = two_people()
    tg[:, 20, :] = 5.0  # B's tag around its joints too
    kp, scores = decode_associative(hm, tg, (64, 64), refine=False)
    assert kp.shape == (2, 17, 3) and scores == pytest.approx([0.9, 0.6])
    j = np.arange(17)
    # single-pixel peaks: the log-blur is symmetric, the dark step is zero
    np.testing.assert_allclose(kp[0], np.stack([(3 + j) * F64, np.full(17, 4 * F64),
                                                np.full(17, 0.9)], 1), rtol=1e-5)
    np.testing.assert_allclose(kp[1, :, :2], np.stack([(3 + j) * F64, np.full(17, 20 * F64)], 1),
                               rtol=1e-5)
    hm[:, 20] *= 2  # B now scores higher: it comes first
    kp2, scores2 = decode_associative(hm, tg, (64, 64), refine=False)
    assert scores2 == pytest.approx([1.2, 0.9]) and kp2[0, 0, 1] == pytest.approx(20 * F64)


def test_missing_joint_is_refined_from_the_heatmap_on_cuda_not_on_cpu():
    hm, tg = two_people(missing=(9,))
    tg[9, 20] = 5.0
    hm[9, 7, 12] = 0.05  # below the detection threshold; neighbours decide the quarter steps
    hm[9, 7, 13], hm[9, 7, 11] = 0.03, 0.01  # right > left: +0.25 in x
    hm[9, 6, 12], hm[9, 8, 12] = 0.02, 0.0  # up > down: -0.25 in y
    kp, scores = decode_associative(hm, tg, (64, 64), refine=False)
    assert kp[0, 9, 2] == 0 and scores[0] == pytest.approx(0.9 * 16 / 17)
    kp, scores = decode_associative(hm, tg, (64, 64), dark_in_place=False)
    np.testing.assert_allclose(kp[0, 9], [12.25 * F64, 6.75 * F64, 0.05], rtol=1e-5)
    assert scores[0] == pytest.approx(0.9 * 16 / 17)  # the score is taken before refine
    kp, _ = decode_associative(hm, tg, (64, 64), dark_in_place=True)  # log-blur maps: < 0
    assert kp[0, 9, 2] == 0
    kp, _ = decode_associative(hm, tg, (64, 64), adjust=False, dark_in_place=True)  # no adjust
    assert kp[0, 9, 2] == pytest.approx(0.05)


def test_peak_on_the_corner_steps_half_a_pixel_out():
    """By hand: blurred delta 0.225 at (0, 0), 0.1125 beside it, the edge pad repeats the
    centre: gradient log(1/2)/2, Hessian log(1/2) on the diagonal, 0 off it: x -= 0.5."""
    hm, tg = maps()
    put(hm, tg, 0, 0, 0, 0.9, 0.0)
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False)
    assert kp.shape == (1, 17, 3)
    np.testing.assert_allclose(kp[0, 0], [-0.5 * F64, -0.5 * F64, 0.9], rtol=1e-5)
    hm, tg = maps()
    put(hm, tg, 0, W - 1, 10, 0.9, 0.0)  # right border: +0.5 in x, none in y
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False)
    np.testing.assert_allclose(kp[0, 0, :2], [(W - 0.5) * F64, 10 * F64], rtol=1e-5)


def test_dark_adjust_finds_a_subpixel_gaussian_peak():
    hm, tg = maps()
    y, x = np.mgrid[:H, :W]
    hm[3] = np.exp(-((x - 10.3) ** 2 + (y - 14.6) ** 2) / (2 * 2.0 ** 2))
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False)
    np.testing.assert_allclose(kp[0, 3, :2] / F64, [10.3, 14.6], atol=0.03)
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False, adjust=False)
    np.testing.assert_allclose(kp[0, 3, :2] / F64, [10, 15])  # the integer peak


def test_only_the_30_best_candidates_of_a_joint_count():
    hm, tg = maps(64, 64)
    for k in range(35):  # 35 peaks 3 px apart in both axes, distinct tags 2 apart
        put(hm, tg, 0, 3 + 3 * (k % 7) * 2, 3 + 3 * (k // 7) * 2, 0.2 + 0.02 * k, 2.0 * k)
    kp, scores = decode_associative(hm, tg, (128, 128), refine=False)
    assert len(kp) == 30
    np.testing.assert_allclose(np.sort(kp[:, 0, 2]), 0.2 + 0.02 * np.arange(5, 35), rtol=1e-5)
    assert len(decode_associative(hm, tg, (128, 128), max_people=10, refine=False)[0]) == 10


def test_non_square_image_back_projection():
    """A 300 x 500 image is read at 512 x 896 (maps 256 x 448): x * (895 / 511 * 299) / 447,
    y * 299 / 255."""
    hm, tg = maps(256, 448)
    put(hm, tg, 5, 100, 50, 0.9, 1.0)
    kp, _ = decode_associative(hm, tg, (300, 500), refine=False)
    assert udp_scale((300, 500), (512, 896)) == pytest.approx((895 / 511 * 299, 299))
    np.testing.assert_allclose(kp[0, 5, :2], [100 * 895 / 511 * 299 / 447, 50 * 299 / 255],
                               rtol=1e-5)
    hm, tg = maps(384, 256)  # portrait 600 x 400: read at 768 x 512
    put(hm, tg, 5, 100, 50, 0.9, 1.0)
    kp, _ = decode_associative(hm, tg, (600, 400), refine=False)
    np.testing.assert_allclose(kp[0, 5, :2], [100 * 399 / 255, 50 * 767 / 511 * 399 / 383],
                               rtol=1e-5)


def test_ties_resolve_in_munkres_order():
    """P1 (tag 0) and P2 (tag 0.4) start at joint 0. At joint 1, c2 (value 0.6, tag 0.3) and c1
    (0.5, tag 0.1) are both within rounding of both people: every cost row is constant, Munkres
    stars the first zero of each row: the first candidate (c2, the higher) joins P1."""
    hm, tg = maps()
    put(hm, tg, 0, 5, 5, 0.9, 0.0)
    put(hm, tg, 0, 20, 5, 0.8, 0.4)
    put(hm, tg, 1, 5, 10, 0.5, 0.1)  # c1: nearer P1's tag
    put(hm, tg, 1, 20, 10, 0.6, 0.3)  # c2
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False, adjust=False)
    by_nose = {round(float(p[0, 0] / F64)): p for p in kp}
    assert by_nose[5][1, 0] == pytest.approx(20 * F64)  # P1 got c2
    assert by_nose[20][1, 0] == pytest.approx(5 * F64)


def test_people_with_the_same_key_merge():
    """mmpose keys a person by the first tag value that started it: two first-joint candidates
    with the same tag are one person, holding the later (lower) candidate."""
    hm, tg = maps()
    put(hm, tg, 0, 5, 5, 0.9, 1.0)
    put(hm, tg, 0, 20, 5, 0.7, 1.0)
    kp, scores = decode_associative(hm, tg, (64, 64), refine=False, adjust=False)
    assert len(kp) == 1 and kp[0, 0, 0] == pytest.approx(20 * F64)
    assert scores[0] == pytest.approx(0.7 / 17)


def test_distant_tag_starts_a_new_person_and_thresholds_apply():
    hm, tg = maps()
    put(hm, tg, 0, 5, 5, 0.9, 0.0)
    put(hm, tg, 1, 6, 5, 0.9, 0.5)  # (0.5, 0.5): 0.71 from (0, 0), same person
    put(hm, tg, 2, 7, 5, 0.9, 1.6)  # 1.91 from the mean tag (0.25, 0.25): a new person
    put(hm, tg, 3, 8, 5, 0.09, 0.0)  # under the detection threshold: nobody's
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False, adjust=False)
    assert len(kp) == 2
    first = kp[np.argmax(kp[:, 0, 2])]
    assert first[1, 2] == pytest.approx(0.9) and first[2, 2] == 0 and first[3, 2] == 0
    kp, _ = decode_associative(hm, tg, (64, 64), refine=False, adjust=False, tag_threshold=2.0)
    assert len(kp) == 1
    assert len(decode_associative(*maps(), (64, 64))[0]) == 0  # nothing: no people, no error


@pytest.mark.parametrize("num_people", [1, 3, 10])
def test_drawn_people_are_found_whole(num_people):
    from tools.benchmarks.bench_detector import drawn_maps
    hm, tg = drawn_maps(num_people, size=256, seed=num_people)
    kp, scores = decode_associative(hm, tg, (512, 512))
    assert len(kp) == num_people and (kp[..., 2] > 0.3).mean() > 0.97  # peaks may touch
    assert np.all(np.diff(scores) <= 0)


def test_bench_detector_reports_network_and_grouping(capsys):
    from tools.benchmarks.bench_detector import main
    main(["detector", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "images/s" in out and out.count("grouping (CPU)") == 4
    for n in (1, 3, 10):
        assert f"{n} drawn people" in out and f"{n} people found" in out


def test_every_person_is_matched_unless_ignore_too_much():
    """mmpose 0.29 matches each joint's candidates against every person so far (no cap);
    `ignore_too_much` restricts the match to the first 30 and keeps only those."""
    hm, tg = maps(64, 64)
    for k in range(30):  # joint 0: people 0-29; joint 1: people 30-59 (tags far from all)
        x, y = 3 + 6 * (k % 10), 3 + 6 * (k // 10)
        put(hm, tg, 0, x, y, 0.5, 10.0 * k)
        put(hm, tg, 1, x, y, 0.5, 10.0 * (k + 30))
    put(hm, tg, 2, 30, 40, 0.9, 10.0 * 45)  # joint 2: the tag of person 45
    kp, _ = decode_associative(hm, tg, (128, 128), refine=False, adjust=False)
    assert len(kp) == 60
    owner = kp[kp[:, 2, 2] > 0]
    assert len(owner) == 1 and owner[0, 1, 2] == pytest.approx(0.5) and owner[0, 0, 2] == 0
    kp, _ = decode_associative(hm, tg, (128, 128), refine=False, adjust=False,
                               ignore_too_much=True)
    assert len(kp) == 30 and not (kp[:, 2, 2] > 0).any()
