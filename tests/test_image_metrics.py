"""FID / FID-64 / KID against their closed forms, and CLIP score against a direct computation,
all with tiny random networks (nothing downloaded)."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import linalg
from torch import nn
from torch.utils.data import DistributedSampler

from grpose.metrics import ClipScore, ImageQuality, InceptionV3Features, load_open_clip

# float64 rounding: a sum of m terms, in any order, is off by <= m eps sum|terms|, and m sum|terms|
# / |sum| < 1e5 here (KID: 30^2 kernel entries cancelling <= 30x; covariances: 30 images cancelling
# ~1e3x; CLIP: 16-d cosines of ~0.02). Summing in float32 moves the results by 1e-8 to 1e-6.
FLOAT64_RTOL = 1e5 * torch.finfo(torch.float64).eps


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add overhead (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyExtractor(nn.Module):
    """A small conv net: images -> (N, 6) features, plus (N, 4) as the "64-d" head if `pair`.

    It computes in float64 and returns float32, so an image's features do not depend on the
    batch it came in (float32 convolutions' rounding does): only the metric's numerics are tested.
    """

    def __init__(self, pair: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.head64 = nn.Linear(8, 6), nn.Linear(8, 4)
        self.pair = pair
        self.double()

    def forward(self, images):
        h = 50 * self.body(images.double())  # distances of order 1-100
        return (self.head(h).float(), self.head64(h).float()) if self.pair else self.head(h).float()


def fid_closed_form(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def kid_closed_form(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased polynomial-kernel MMD^2 (degree 3, gamma 1/d, coef 1) of equal-size sets."""
    m, d = a.shape
    kernel = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    within = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return float(within(kernel(a, a)) + within(kernel(b, b)) - 2 * kernel(a, b).mean())


def images(n: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 0.8 + shift).clamp(0, 1)


def feed(metric: ImageQuality, real: torch.Tensor, fake: torch.Tensor) -> None:
    for chunk in real.split(7):
        metric.update(chunk, real=True)
    for chunk in fake.split(7):
        metric.update(chunk, real=False)


def test_fid_fid64_kid_match_closed_forms():
    extractor = TinyExtractor(pair=True)
    real, fake = images(30, 0.0, 1), images(30, 0.2, 2)
    metric = ImageQuality(extractor, kid_subsets=5, input_size=(3, 16, 16))  # subset 200 > 30
    feed(metric, real, fake)
    got = metric.compute()
    with torch.no_grad():
        (fr, fr64), (ff, ff64) = ([f.double().numpy() for f in extractor(x)] for x in (real, fake))
    assert got["fid"].item() == pytest.approx(fid_closed_form(fr, ff), rel=FLOAT64_RTOL)
    assert got["fid64"].item() == pytest.approx(fid_closed_form(fr64, ff64), rel=FLOAT64_RTOL)
    assert got["kid_mean"].item() == pytest.approx(kid_closed_form(fr, ff), rel=FLOAT64_RTOL)
    assert got["kid_std"].item() < FLOAT64_RTOL * got["kid_mean"].item()  # subsets: the whole set


def test_kid_subsets_average_to_the_full_estimate():
    extractor = TinyExtractor()
    real, fake = images(40, 0.0, 3), images(40, 0.2, 4)
    metric = ImageQuality(extractor, kid_subset_size=10, kid_subsets=100, input_size=(3, 16, 16))
    feed(metric, real, fake)
    got = metric.compute()
    assert set(got) == {"fid", "kid_mean", "kid_std"}  # no 64-d head, no FID-64
    with torch.no_grad():
        full = kid_closed_form(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert got["kid_std"] > 0
    assert abs(got["kid_mean"].item() - full) < 4 * got["kid_std"].item() / np.sqrt(100)


def test_real_statistics_survive_reset_when_asked():
    extractor = TinyExtractor(pair=True)
    real, fake = images(20, 0.0, 5), images(20, 0.3, 6)
    metric = ImageQuality(extractor, kid_subsets=5, reset_real_features=False,
                          input_size=(3, 16, 16))
    feed(metric, real, fake)
    first = metric.compute()
    metric.reset()
    for chunk in fake.split(7):
        metric(chunk, real=False)  # forward = update: accumulates
    again = metric.compute()
    for name in ("fid", "fid64", "kid_mean"):  # kid_std: rounding noise of the subset order
        assert again[name].item() == pytest.approx(first[name].item(), rel=FLOAT64_RTOL)


def quality(real, fake, real_ids, fake_ids, repeat: int) -> dict[str, float]:
    """Metrics after feeding the first `repeat` images of each side a second time."""
    metric = ImageQuality(TinyExtractor(pair=True), kid_subsets=5, input_size=(3, 16, 16))
    for ids, is_real, x in ((real_ids, True, real), (fake_ids, False, fake)):
        metric.update(x, real=is_real, ids=ids)
        metric.update(x[:repeat], real=is_real, ids=None if ids is None else ids[:repeat])
    torch.manual_seed(0)  # KID subsets
    return {k: v.item() for k, v in metric.compute().items()}


def test_repeated_ids_counted_once_in_quality():
    real, fake = images(20, 0.0, 7), images(20, 0.3, 8)
    ids = torch.arange(20)
    once = quality(real, fake, ids, ids + 100, repeat=0)
    assert quality(real, fake, ids, ids + 100, repeat=5) == pytest.approx(once, rel=FLOAT64_RTOL)
    without = quality(real, fake, None, None, repeat=5)
    for name in ("fid", "fid64", "kid_mean"):
        assert without[name] != pytest.approx(once[name], rel=FLOAT64_RTOL)


def _ddp_worker(rank: int, world: int, port: int, real, fake, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    indices = list(DistributedSampler(range(len(real)), world, rank, shuffle=False))
    with_ids = ImageQuality(TinyExtractor(pair=True), kid_subsets=5, input_size=(3, 16, 16))
    without = ImageQuality(TinyExtractor(pair=True), kid_subsets=5, input_size=(3, 16, 16))
    for start in range(0, len(indices), 4):
        batch = indices[start:start + 4]
        for metric, ids in ((with_ids, batch), (without, None)):
            metric.update(real[batch], real=True, ids=ids)
            metric.update(fake[batch], real=False, ids=ids)
    result = [{k: v.item() for k, v in m.compute().items()} for m in (with_ids, without)]
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_ddp_quality_counts_padded_images_once(tmp_path):
    real, fake = images(11, 0.0, 9), images(11, 0.3, 10)  # 11 on 2 processes: image 0 twice
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, real, fake, out), nprocs=2, join=True)
    with_ids, without = torch.load(out)
    single = ImageQuality(TinyExtractor(pair=True), kid_subsets=5, input_size=(3, 16, 16))
    feed(single, real, fake)
    single = {k: v.item() for k, v in single.compute().items()}
    for name in ("fid", "fid64", "kid_mean"):  # kid_mean: every subset is the whole set
        assert with_ids[name] == pytest.approx(single[name], rel=FLOAT64_RTOL)
        assert without[name] != pytest.approx(single[name], rel=FLOAT64_RTOL)


def test_inception_features_load_a_local_file(tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
    with monkeypatch.context() as m:  # a random network to save: skip the (download) loading
        m.setattr(torch, "load", lambda *args, **kwargs: None)
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        random_net = tf_inception.FeatureExtractorInceptionV3("x", ["2048"], "unused")
    torch.save(random_net.state_dict(), tmp_path / "inception.pth")
    with pytest.raises(FileNotFoundError):
        InceptionV3Features(str(tmp_path / "missing.pth"))
    extractor = InceptionV3Features(str(tmp_path / "inception.pth")).train()
    assert not extractor.training
    batch = torch.randint(0, 256, (1, 3, 40, 48), dtype=torch.uint8)
    f2048, f64 = extractor(batch)
    assert f2048.shape == (1, 2048) and f64.shape == (1, 64)
    torch.testing.assert_close(extractor(batch.float() / 255)[1], f64)


# -- CLIP score -----------------------------------------------------------------------------------
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                            "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model, tokenizer) through `load_open_clip`, from a tiny config and a random local file."""
    import open_clip  # here, not at the top: spawned DDP workers import this module
    root = tmp_path_factory.mktemp("clip")
    (root / "grpose-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "grpose-tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("grpose-tiny-clip").state_dict(), root / "weights.pt")
    with pytest.raises(FileNotFoundError):
        load_open_clip(str(root / "missing.pt"), arch="grpose-tiny-clip")
    return load_open_clip(str(root / "weights.pt"), arch="grpose-tiny-clip")


def direct_clip_scores(model, tokenizer, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """One batch's scores: float32 embeddings (as the metric's), cosines in float64."""
    import open_clip
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]
    with torch.no_grad():
        img = model.encode_image((pixels - mean) / std).double()
        txt = model.encode_text(tokenizer(texts)).double()
    cos = (img / img.norm(dim=-1, keepdim=True) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1)
    return 100 * cos.clamp(min=0)


def test_clip_score_matches_direct_computation(tiny_clip):
    model, tokenizer = tiny_clip
    pixels = torch.rand(8, 3, 32, 32)
    texts = [f"a photo of {w}" for w in "a dog, two cats, a dancer, a statue, a cartoon, "
             "an oil painting, a kid, a sketch".split(", ")]
    metric = ClipScore(model, tokenizer)
    metric.update(pixels[:5], texts[:5])
    metric.update(pixels[5:], texts[5:])
    want = torch.cat([direct_clip_scores(model, tokenizer, pixels[:5], texts[:5]),
                      direct_clip_scores(model, tokenizer, pixels[5:], texts[5:])])
    assert (want == 0).any() and (want > 0).any()  # the clamp at 0 is exercised
    assert metric.compute().item() == pytest.approx(want.mean().item(), rel=FLOAT64_RTOL)

    as_bytes = ClipScore(model, tokenizer)
    as_bytes.update((pixels * 255).round().to(torch.uint8), texts)
    assert as_bytes.compute().item() == pytest.approx(metric.compute().item(), abs=0.5)


def test_clip_score_truncates_prompts_to_77_tokens(tiny_clip):
    model, tokenizer = tiny_clip
    pixels = torch.rand(1, 3, 48, 40)  # resized and centre-cropped to 32 x 32

    def score(text):
        metric = ClipScore(model, tokenizer)
        metric.update(pixels, [text])
        return metric.compute().item()

    long = "oil painting, " + "an oil painting " * 40
    assert score(long + "of a dog") == score(long + "of a cat") > 0  # beyond 77 tokens: cut
    assert score("an oil painting of a dog") != score("an oil painting of a cat")


def test_repeated_ids_counted_once_in_clip_score(tiny_clip):
    model, tokenizer = tiny_clip
    pixels = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = [f"a photo of {w}" for w in "a dog, two cats, a dancer, a statue, a cartoon, "
             "an oil painting, a kid, a sketch".split(", ")]
    direct = direct_clip_scores(model, tokenizer, pixels, texts)
    first = int(direct.argmax())  # the image fed again: the highest score
    order = [first] + [i for i in range(8) if i != first]
    pixels, texts = pixels[order], [texts[i] for i in order]
    direct = direct_clip_scores(model, tokenizer, pixels, texts)  # the metric's batch

    def score(ids, repeat: int) -> float:
        metric = ClipScore(model, tokenizer)
        metric.update(pixels, texts, ids=ids)
        metric.update(pixels[:repeat], texts[:repeat], ids=None if ids is None else ids[:repeat])
        return metric.compute().item()

    once = score(list(range(8)), 0)
    assert once == pytest.approx(direct.mean().item(), rel=FLOAT64_RTOL)
    assert score(list(range(8)), 1) == pytest.approx(once, rel=FLOAT64_RTOL)
    assert score(None, 1) > once  # the best image counted twice
