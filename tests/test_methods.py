"""Contract tests every registered method passes (built from configs/method/tiny/<name>.yaml):
zero-init identity, one training step changes only the trainable parts, seeded sampling reproduces,
`active=False` is the method's unconditional behaviour, checkpoints round-trip, CUDA bf16."""
from __future__ import annotations

import copy

import pytest
import torch

from grpose.diffusion import PoseDiffusionModule, SamplingSettings, TrainingSettings
from grpose.diffusion.components import noise_scheduler, seeded
from grpose.diffusion.denoiser import predict_eps
from grpose.methods import METHODS, method_from_config

NAMES = sorted(METHODS)
T = torch.tensor([10, 400, 900])


def build(name: str):
    return method_from_config(f"configs/method/tiny/{name}.yaml")


def test_registry_has_a_tiny_and_an_sd15_config_per_method():
    for name in NAMES:
        assert isinstance(build(name), METHODS[name])
        assert type(method_from_config(f"configs/method/{name}.yaml")) is METHODS[name]


@pytest.mark.parametrize("name", NAMES)
def test_zero_init_leaves_the_unet_prediction_unchanged(tiny_parts, tiny_inputs, name):
    unet = copy.deepcopy(tiny_parts[0])  # attach may change it (HumanSD widens conv_in)
    method = build(name)
    method.attach(unet)
    noisy, text, cond = tiny_inputs
    with torch.no_grad():
        plain = unet(noisy, T, encoder_hidden_states=text).sample
        assert torch.equal(predict_eps(unet, method, noisy, T, text, cond), plain)


def build_on(unet, names) -> dict:
    """The methods `names`, in that order, each built and attached to the one shared `unet`
    with its random init seeded by its registry position (the same in any order)."""
    methods = {}
    for name in names:
        with seeded(NAMES.index(name)):
            methods[name] = build(name)
            methods[name].attach(unet)
    return methods


def test_methods_sharing_one_unet_predict_alike_in_any_order(tiny_parts, tiny_inputs,
                                                            perturb_zero_parameters):
    noisy, text, cond = tiny_inputs
    with torch.no_grad():
        unwidened = tiny_parts[0](noisy, T, encoder_hidden_states=text).sample
    trained = []
    for names in (list(METHODS), list(METHODS)[::-1]):  # HumanSD (a wider conv_in) last, first
        unet = copy.deepcopy(tiny_parts[0])
        methods = build_on(unet, names)
        assert unet.config.in_channels == 4 + methods["humansd"].extra_input_channels
        with torch.no_grad():
            plain = unet(noisy, T, encoder_hidden_states=text).sample  # no extra channels
            torch.testing.assert_close(plain, unwidened, rtol=1e-5, atol=1e-6)
            for name, method in methods.items():  # zero-init: the plain UNet's prediction
                assert torch.equal(predict_eps(unet, method, noisy, T, text, cond), plain), name
            for name in NAMES:
                with seeded(100 + NAMES.index(name)):
                    perturb_zero_parameters(methods[name])
            trained.append({name: predict_eps(unet, methods[name], noisy, T, text, cond)
                            for name in NAMES})
    for name in NAMES:
        assert not torch.equal(trained[0][name], plain) or name == "no_pose", name
        assert torch.equal(trained[0][name], trained[1][name]), name


def config_trainable(name: str) -> list[str]:
    """`model.init_args.training.trainable` of a method's tiny config (default: the method)."""
    import yaml
    with open(f"configs/method/tiny/{name}.yaml") as f:
        training = yaml.safe_load(f)["model"]["init_args"].get("training", {})
    return training.get("trainable", ["method"])


@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_changes_only_the_trainable_parts(tiny_parts, tiny_batch, name):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    m = PoseDiffusionModule(unet, vae, text, build(name), noise_scheduler(),
                            training=TrainingSettings(lr=1e-3, trainable=config_trainable(name)))
    parts = tuple(f"{p}." for p in m.trainable)  # "method" for pose methods; HumanSD: + "unet"
    frozen = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith(parts)}
    before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(parts)}
    if not before:  # NoPose: nothing to train, said clearly
        with pytest.raises(ValueError, match="nothing to train"):
            m.configure_optimizers()
        return
    opt = m.configure_optimizers()
    m.train()
    loss, _ = m.diffusion_step(tiny_batch)
    loss.backward()
    opt.step()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in frozen.items())
    after = m.state_dict()
    for part in parts:
        assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith(part))


@pytest.mark.parametrize("name", NAMES)
def test_seeded_sampling_reproduces(tiny_parts, tiny_batch, name, perturb_zero_parameters):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    m = PoseDiffusionModule(unet, vae, text, build(name), noise_scheduler(),
                            sampling=SamplingSettings(num_inference_steps=2)).eval()
    perturb_zero_parameters(m.method)
    a, b = m.generate(tiny_batch), m.generate(tiny_batch)
    assert torch.equal(a, b) and not torch.equal(a, m.generate(tiny_batch, seeds=[5, 6, 7]))


@pytest.mark.parametrize("name", NAMES)
def test_inactive_items_get_the_unconditional_behaviour(tiny_parts, tiny_inputs, name,
                                                        perturb_zero_parameters):
    unet = copy.deepcopy(tiny_parts[0])  # attach may change it (HumanSD widens conv_in)
    method = build(name)
    method.attach(unet)
    perturb_zero_parameters(method)
    noisy, text, cond = tiny_inputs
    active = torch.tensor([True, False, True])
    with torch.no_grad():
        mixed = predict_eps(unet, method, noisy, T, text, cond.with_active(active))
        on = predict_eps(unet, method, noisy, T, text, cond)
        if method.handles_inactive:  # the method's own unconditional branch
            off = predict_eps(unet, method, noisy, T, text, cond.with_active(False))
        else:  # the plain UNet
            off = unet(noisy, T, encoder_hidden_states=text).sample
    torch.testing.assert_close(mixed[active], on[active], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[~active], off[~active], rtol=1e-5, atol=1e-6)
    if name != "no_pose":
        assert not torch.allclose(on[~active], off[~active])


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(tiny_parts, tiny_inputs, tmp_path, name,
                               perturb_zero_parameters):
    unet = copy.deepcopy(tiny_parts[0])  # attach may change it (HumanSD widens conv_in)
    method = build(name)
    method.attach(unet)
    perturb_zero_parameters(method)
    torch.save(method.state_dict(), tmp_path / "m.pt")
    fresh = build(name)
    fresh.attach(unet)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    noisy, text, cond = tiny_inputs
    with torch.no_grad():
        assert torch.equal(predict_eps(unet, fresh, noisy, T, text, cond),
                           predict_eps(unet, method, noisy, T, text, cond))


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_cuda_in_bf16(tiny_parts, tiny_inputs, name,
                                         perturb_zero_parameters):
    unet = copy.deepcopy(tiny_parts[0]).cuda()
    method = build(name)
    method.attach(unet)
    method.cuda()
    perturb_zero_parameters(method)
    noisy, text, cond = tiny_inputs
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eps = predict_eps(unet, method, noisy.cuda(), T.cuda(), text.cuda(), cond.to("cuda"))
    eps.float().square().mean().backward()
    assert torch.isfinite(eps).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in method.parameters())
