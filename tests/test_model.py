import pytest
import torch

from napari_sevnet.model import CONFIGS, SEVNet, SEVNetConfig, build_model


def test_faithful_configuration_is_the_paper():
    cfg = SEVNetConfig(**CONFIGS["faithful"])
    assert cfg.channels == (16, 32, 64, 128, 256)
    assert cfg.encoder_convs == (1, 2, 3, 3, 3)
    assert cfg.decoder_convs == (3, 3, 2, 1)
    assert cfg.kernel_size == 5
    model = SEVNet(cfg)
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.stride == (1, 1, 1) and m.kernel_size != (1, 1, 1)}
    assert kernels == {(5, 5, 5)}
    assert all(isinstance(m, torch.nn.ConvTranspose3d) for m in (u[0] for u in model.up))
    assert all(m[0].stride == (2, 2, 2) for m in model.down)  # strided-conv down-sampling
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())


@pytest.mark.parametrize("preset", ["middle", "lite", "tiny"])
def test_forward_shapes_and_attention_in_every_stage(preset):
    model = build_model("sevnet", {"preset": preset}).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        logits, attention, features = model.forward_with_attention(x, keep_features=True)
    assert logits.shape == (1, 3, 32, 32, 32)
    levels = len(CONFIGS[preset]["channels"])
    assert list(attention) == model.stage_names and len(attention) == 2 * levels - 1
    for name, exc in attention.items():
        assert exc.shape == (1, features[name].shape[1])
        assert torch.all((exc > 0) & (exc < 1))


def test_se_off_is_plain_vnet():
    vnet = build_model("vnet", {"preset": "tiny"})
    assert not any(type(m).__name__ == "SqueezeExcitation3d" for m in vnet.modules())
    _, attention, _ = vnet.forward_with_attention(torch.randn(1, 4, 16, 16, 16))
    assert attention == {}
    sev = build_model("sevnet", {"preset": "tiny"})
    assert sum(p.numel() for p in sev.parameters()) > sum(p.numel() for p in vnet.parameters())


def test_attention_is_returned_not_stored():
    torch.manual_seed(0)  # an unlucky init can zero a 2-unit SE hidden layer, making one stage's excitation constant
    model = build_model("sevnet", {"preset": "tiny"}).eval()
    a = model.forward_with_attention(torch.zeros(1, 4, 16, 16, 16))[1]
    b = model.forward_with_attention(torch.randn(1, 4, 16, 16, 16) * 3)[1]
    assert set(a) == set(b) == set(model.stage_names)
    assert any(not torch.equal(a[stage], b[stage]) for stage in a), "the excitation must depend on the input"
    assert not any(isinstance(v, torch.Tensor) for v in vars(model).values())


def test_standardised_squeeze_sees_the_same_scale_at_every_stage():
    """The MLP's input is standardised across channels: a stage whose pre-norm means are large cannot saturate on scale alone."""
    torch.manual_seed(1)  # with seed 0 both hidden units of tiny's dec2 SE start dead (ReLU), a constant excitation
    model = build_model("sevnet", {"preset": "tiny", "se_squeeze": "standardised"}).eval()
    seen = {}
    for name, stage in zip(model.stage_names, model.stages):
        stage.se.fc1.register_forward_pre_hook(lambda mod, args, name=name: seen.update({name: args[0]}) or None)
    with torch.inference_mode():
        model(torch.randn(1, 4, 16, 16, 16) * 50)
    assert set(seen) == set(model.stage_names)
    for squeezed in seen.values():
        torch.testing.assert_close(squeezed.mean(dim=1), torch.zeros(1), atol=1e-4, rtol=0)
        torch.testing.assert_close(squeezed.std(dim=1, unbiased=False), torch.ones(1), atol=1e-2, rtol=0)
    a = model.forward_with_attention(torch.randn(1, 4, 16, 16, 16))[1]
    b = model.forward_with_attention(torch.randn(1, 4, 16, 16, 16) * 3 + 1)[1]
    assert all(not torch.equal(a[stage], b[stage]) for stage in a), "every stage's excitation depends on the input"


def test_max_squeeze_sees_what_the_mean_hides():
    """Two stage outputs with the same channel means but a different peak (a tumour's strongest response) excite differently."""
    from napari_sevnet.model.sevnet import SqueezeExcitation3d

    torch.manual_seed(0)
    flat = torch.ones(1, 8, 4, 4, 4)
    peaked = torch.full_like(flat, 31.0 / 63)
    peaked[0, :, 0, 0, 0] = 33.0  # 33 + 63 * 31/63 = 64: the mean of every channel stays 1
    torch.testing.assert_close(peaked.mean(dim=(2, 3, 4)), flat.mean(dim=(2, 3, 4)))
    assert not torch.equal(peaked.amax(dim=(2, 3, 4)), flat.amax(dim=(2, 3, 4)))
    with_max, mean_only = SqueezeExcitation3d(8, 4, with_max=True), SqueezeExcitation3d(8, 4)
    mean_only.load_state_dict(with_max.state_dict())
    assert torch.equal(mean_only(flat)[1], mean_only(peaked)[1])
    assert not torch.allclose(with_max(flat)[1], with_max(peaked)[1], atol=1e-4)


@pytest.mark.parametrize("squeeze", ["standardised", "mean_max"])
def test_restart_excitations_starts_at_the_given_excitation_off_saturation(squeeze):
    torch.manual_seed(0)
    model = build_model("sevnet", {"preset": "tiny", "se_squeeze": squeeze}).eval()
    target = {name: torch.rand(stage.se.fc2.out_features) for name, stage in zip(model.stage_names, model.stages)}
    target["enc1"][0], target["enc1"][1] = 1.0, 0.0  # saturated gates of the old model
    model.restart_excitations(target)
    bias_enters = 2 if squeeze == "mean_max" else 1  # the maxima's logits add to the mean's
    for name, stage in zip(model.stage_names, model.stages):
        torch.testing.assert_close(torch.sigmoid(bias_enters * stage.se.fc2.bias), target[name].clamp(0.0025, 0.9975), atol=1e-4, rtol=0)
    with torch.inference_mode():
        _, attention, _ = model.forward_with_attention(torch.randn(1, 4, 16, 16, 16))
    for name, exc in attention.items():
        assert (exc[0] - target[name]).abs().mean() < 0.15, f"{name}: a restarted stage starts near the excitation it was given"


def test_bad_configs_rejected():
    with pytest.raises(ValueError):
        SEVNetConfig(channels=(8, 16, 24), encoder_convs=(1, 1, 1))
    with pytest.raises(ValueError):
        SEVNetConfig(kernel_size=4)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet9000")


@pytest.mark.parametrize("name", ["sevnet", "vnet", "unet3d", "unet2d", "eenet", "segresnet"])
def test_zoo_forward_shapes(name):
    from napari_sevnet.model import size_divisor

    config = {"preset": "tiny"} if name in ("sevnet", "vnet") else {}
    model = build_model(name, config).eval()
    size = max(size_divisor(model, name), 16)
    x = torch.randn(2, 4, size, 2 * size, size)
    with torch.inference_mode():
        assert model(x).shape == (2, 3, *x.shape[2:])


def test_unet3d_is_depth_four_with_double_convs():
    from napari_sevnet.model.zoo import UNet3D

    model = UNet3D()
    assert len(model.down) == 4 and all(len(b) == 4 for b in model.down)  # conv, ReLU, conv, ReLU
    assert isinstance(model.pool, torch.nn.MaxPool3d)
