"""The weight-sharing supernet: every subnet of a tiny space equals the standalone model extracted from it."""
from __future__ import annotations

import random

import pytest
import torch

import edgezoo
from edgezoo.models.arch_spec import make_arch_spec, save_arch_spec
from edgezoo.search.space import FusedStageSpace, MQAOption, SearchSpace, UIBStageSpace
from edgezoo.search.supernet import Supernet, recalibrate_bn, resize_to, shared_fraction

TINY = SearchSpace(
    name="tiny", version=1, resolutions=(32,), stem_chs=8,
    fused=FusedStageSpace(widths=(8,), depths=(1,), expand_ratios=(2.0,)),
    stages=(
        UIBStageSpace(widths=(8, 16), depths=(1, 2), start_dw_kernels=(None, 3, 5), mid_dw_kernels=(None,),
                      expand_ratios=(2.0,)),
        UIBStageSpace(widths=(16,), depths=(1, 2), start_dw_kernels=(None,), mid_dw_kernels=(3, 5),
                      expand_ratios=(2.0, 3.0), mqa=MQAOption(num_heads=2, head_dim=8, kv_stride=2)),
    ),
    last_chs=(32,), head_chs=32,
)


def _perturb_bn(net: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so slicing mistakes show in the outputs."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kernel_transform", [False, True])
def test_every_subnet_equals_its_extracted_model(kernel_transform: bool) -> None:
    torch.manual_seed(0)
    net = Supernet(TINY, num_classes=5, kernel_transform=kernel_transform).eval()
    _perturb_bn(net)
    if kernel_transform:  # move the transforms away from the identity
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.data.add_(torch.randn_like(p) * 0.05)
    subnets = list(TINY.enumerate())
    assert len(subnets) == TINY.num_subnets() == len({s.key() for s in subnets}) > 100
    if kernel_transform:  # the transforms only change kernels: a sample is enough
        subnets = random.Random(0).sample(subnets, 40)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for sub in subnets:
            model = net.extract(sub).eval()
            ref = net(x, sub)
            out = model(x)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=sub.describe())


def test_extracted_model_round_trips_through_a_spec_file(tmp_path) -> None:
    torch.manual_seed(0)
    net = Supernet(TINY, num_classes=5).eval()
    _perturb_bn(net)
    sub = TINY.sample(random.Random(3))
    model = net.extract(sub).eval()
    spec = make_arch_spec(TINY.to_config(sub), name="tiny-sub", img_size=sub.resolution, space=TINY.identity())
    path = save_arch_spec(spec, tmp_path / "arch.yaml")
    from edgezoo.checkpoint import save_safetensors

    save_safetensors(model.state_dict(), tmp_path / "w.safetensors")
    rebuilt = edgezoo.create_model(str(path), num_classes=5, checkpoint=tmp_path / "w.safetensors").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x, sub))


def test_weights_are_shared_and_training_mode_matches() -> None:
    torch.manual_seed(0)
    net = Supernet(TINY, num_classes=5)
    assert shared_fraction(net, TINY.largest()) > shared_fraction(net, TINY.smallest()) > 0
    # in training mode both use batch statistics: outputs still agree
    sub = TINY.largest()
    model = net.extract(sub).train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), net.train()(x, sub), rtol=1e-4, atol=1e-5)


def test_recalibrate_bn_estimates_exact_statistics() -> None:
    torch.manual_seed(0)
    net = Supernet(TINY, num_classes=5)
    model = net.extract(TINY.smallest())
    batches = [torch.randn(8, 3, 32, 32) * 2 + 1 for _ in range(3)]
    recalibrate_bn(model, batches)
    assert not model.training
    x = torch.cat(batches)
    # the stem BN's running mean is the mean of the stem conv's output over all calibration images
    conv_out = model.conv_stem.conv(x)
    torch.testing.assert_close(model.conv_stem.bn.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_resize_to() -> None:
    x = torch.randn(2, 3, 64, 64)
    assert resize_to(x, 32).shape == (2, 3, 32, 32)
    assert resize_to(x, 64) is x
