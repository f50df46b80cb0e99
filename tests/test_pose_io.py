"""Pose files are read without running code from them; tools/data/convert_poses.py drops the
pickles."""
import io
import pickle
import zipfile

import numpy as np
import pytest

from grpose.data import DataError
from grpose.data.io import check_people, load_pose_npz, read_pose_npz, save_pose_npz
from tools.data.convert_poses import main as convert_main


def _trusted_keypoints(path):
    """What the loader returned before: `np.load(allow_pickle=True)`, dicts' keypoints stacked."""
    with np.load(path, allow_pickle=True) as z:
        data = z["arr_0"]
    if data.dtype != object:
        return np.asarray(data, np.float32)
    return np.stack([np.asarray(p["keypoints"], np.float32).reshape(-1) for p in data])


def _humansd_like(path, people, protocol=None):
    """An object array of per-person dicts as HumanSD writes it (float64, numpy scalars).

    `protocol`: written as an older numpy's `np.save` would (2: numpy < 1.17, 3: numpy 1.x,
    whose module is `numpy.core`).
    """
    arr = np.empty(len(people), dtype=object)
    arr[:] = [{"keypoints": kp.astype(np.float64), "score": np.float64(0.5 + i / 10),
               "area": float(i * 3)} for i, kp in enumerate(people)]
    if protocol is None:
        np.savez(path, arr)
        return
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False,
                                               "shape": arr.shape})
    buf.write(pickle.dumps(arr, protocol=protocol).replace(b"numpy._core.", b"numpy.core."))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arr_0.npy", buf.getvalue())


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_unsafe_pickle_raises_and_runs_nothing(tmp_path, unsafe_npz, nested, protocol):
    path, marker = tmp_path / "evil.npz", tmp_path / "marker"
    unsafe_npz(path, marker, nested=nested, protocol=protocol)
    with pytest.raises(DataError, match="pose file holds a pickled object of type") as e:
        load_pose_npz(str(path))
    assert str(path) in str(e.value) and e.value.kind == "unsafe pickle"
    assert not marker.exists()
    np.load(path, allow_pickle=True)["arr_0"]  # the payload is live: a trusting load runs it
    assert marker.exists()


@pytest.mark.parametrize("writer",
                         ["save_pose_npz", "np.savez", "numpy 1", "protocol 2", "numeric"])
def test_genuine_files_load_as_before(tmp_path, make_person, writer):
    people = np.stack([make_person(10, 10), make_person(40, 20, 30)])
    people[1, 4] = [-1, -1, 0]
    path = str(tmp_path / "pose.npz")
    if writer == "save_pose_npz":
        save_pose_npz(path, people, scores=[0.5, 0.6])
    elif writer == "numeric":
        np.savez(path, arr_0=people)
    else:
        _humansd_like(path, people, {"np.savez": None, "numpy 1": 3, "protocol 2": 2}[writer])
    got, expected = load_pose_npz(path), _trusted_keypoints(path)
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(check_people(got, path), people)
    arrays = read_pose_npz(path)
    if writer != "numeric":
        np.testing.assert_allclose(arrays["score"], [0.5, 0.6])
    assert ("area" in arrays) == (writer != "numeric")


def test_empty_and_pickle_free_object_arrays(tmp_path):
    path = str(tmp_path / "empty.npz")
    save_pose_npz(path, np.zeros((0, 17, 3)))
    assert check_people(load_pose_npz(path), path).shape == (0, 17, 3)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, keypoints=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match="keypoints is an object array") as e:
        load_pose_npz(bad)
    assert e.value.kind == "bad pose file"


def test_convert_poses_round_trip(tmp_path, make_person, unsafe_npz, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    one, two = make_person(10, 10)[None], np.stack([make_person(5, 5), make_person(30, 8, 25)])
    save_pose_npz(str(src / "a" / "one.npz"), one, scores=[0.7])
    (src / "b" / "c").mkdir(parents=True)
    _humansd_like(str(src / "b" / "c" / "two.npz"), two)
    np.savez(str(src / "numeric.npz"), arr_0=two)
    unsafe_npz(src / "b" / "evil.npz", tmp_path / "marker", nested=True)
    (src / "b" / "broken.npz").write_bytes(b"PK\x03\x04 broken zip")
    assert convert_main([str(src), str(out)]) == 1
    assert "converted 3, failed 2" in capsys.readouterr().out
    assert not (tmp_path / "marker").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz")) == [
        "a/one.npz", "b/c/two.npz", "numeric.npz"]
    for rel, people, score in [("a/one.npz", one, [0.7]), ("b/c/two.npz", two, [0.5, 0.6]),
                               ("numeric.npz", two, [1, 1])]:
        with np.load(out / rel, allow_pickle=False) as z:
            assert sorted(z.files) == ["area", "keypoints", "score"]
            np.testing.assert_array_equal(z["keypoints"], people)
            assert z["keypoints"].dtype == np.float32
            np.testing.assert_allclose(z["score"], score)
            assert z["area"].shape == (len(people),)
        converted, original = str(out / rel), str(src / rel)
        np.testing.assert_array_equal(check_people(load_pose_npz(converted), converted),
                                      check_people(load_pose_npz(original), original))
    with np.load(out / "b/c/two.npz") as z:
        np.testing.assert_array_equal(z["area"], [0, 3])
