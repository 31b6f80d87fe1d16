"""``create_model(name, checkpoint=PATH)``: file formats, key formats (detected), wrappers, safety and errors.

Small models only (mobilenetv3_small_050, mobilenetv2_035); torchvision interop uses the 1.0 models it ships.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import edgezoo
from oracle import rel_diff, assert_close, perturb_, timm_model

V3 = "mobilenetv3_small_050"
V2 = "mobilenetv2_035"
SIZE = (1, 3, 97, 81)


def save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def timm_v3():
    return perturb_(timm_model(V3), seed=1).eval()


@pytest.fixture(scope="module")
def ours_v2():
    return perturb_(edgezoo.create_model(V2), seed=2).eval()


def outputs(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model(x)


# --- formats and key sources ------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt"])
def test_timm_keys_detected(tmp_path, timm_v3, suffix):
    path = save(timm_v3.state_dict(), tmp_path / f"timm{suffix}")
    model = edgezoo.create_model(V3, checkpoint=path).eval()
    x = torch.randn(*SIZE)
    assert_close(outputs(model, x), outputs(timm_v3, x), 1e-4, what="timm checkpoint")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_edgezoo_keys_roundtrip(tmp_path, ours_v2, suffix):
    path = save(ours_v2.state_dict(), tmp_path / f"ours{suffix}")
    model = edgezoo.create_model(V2, checkpoint=str(path)).eval()
    x = torch.randn(*SIZE)
    assert torch.equal(outputs(model, x), outputs(ours_v2, x))


@pytest.mark.parametrize(
    ("tv_name", "name", "overrides"),
    [
        ("mobilenet_v3_small", "mobilenetv3_small_100", {}),  # torchvision's BN eps 1e-3 applied on detection
        ("mobilenet_v3_small", "mobilenetv3_small_100", {"bn_eps": 1e-3}),  # ... or given explicitly
        ("mobilenet_v2", "mobilenetv2_100", {}),
    ],
)
def test_torchvision_keys_detected(tmp_path, tv_name, name, overrides):
    import torchvision

    ref = perturb_(getattr(torchvision.models, tv_name)(weights=None), seed=3).eval()
    path = save(ref.state_dict(), tmp_path / f"{tv_name}.pth")
    model = edgezoo.create_model(name, checkpoint=path, **overrides).eval()
    x = torch.randn(*SIZE)
    # Tighter than the usual 1e-4: a wrong BN eps (1e-5 instead of 1e-3) shifts outputs by ~5e-5 of scale.
    assert_close(outputs(model, x), outputs(ref, x), 1e-6, what=f"torchvision {tv_name} checkpoint")


def test_explicit_override_beats_detected_source_setting(tmp_path):
    """An explicit bn_eps wins over the torchvision default; with the wrong eps the outputs visibly differ."""
    import torchvision

    ref = perturb_(torchvision.models.mobilenet_v3_small(weights=None), seed=3).eval()
    path = save(ref.state_dict(), tmp_path / "tv.pth")
    model = edgezoo.create_model("mobilenetv3_small_100", checkpoint=path, bn_eps=1e-5).eval()
    x = torch.randn(*SIZE)
    assert rel_diff(outputs(model, x), outputs(ref, x)) > 1e-5


def test_features_only_drops_unused_head_keys(tmp_path, timm_v3):
    path = save(timm_v3.state_dict(), tmp_path / "timm.safetensors")
    model = edgezoo.create_model(V3, checkpoint=path, features_only=True).eval()
    assert not any(k.startswith(("conv_head", "classifier")) for k in model.state_dict())
    ref = timm_model(V3, features_only=True).eval()
    ref.load_state_dict(timm_v3.state_dict(), strict=False)  # timm's feature model: same trunk keys, no head
    x = torch.randn(*SIZE)
    maps, expected = outputs(model, x), outputs(ref, x)
    assert len(maps) == len(expected)
    for a, b in zip(maps, expected):
        assert_close(a, b, 1e-4, what="features_only map from a full checkpoint")


def test_features_only_from_full_edgezoo_checkpoint(tmp_path, ours_v2):
    path = save(ours_v2.state_dict(), tmp_path / "ours.safetensors")
    model = edgezoo.create_model(V2, checkpoint=path, features_only=True, out_indices=(-1,)).eval()
    x = torch.randn(*SIZE)
    (deepest,) = outputs(model, x)
    with torch.no_grad():
        assert torch.equal(deepest, ours_v2.stages(ours_v2.stem(x)))


def test_features_only_checkpoint_into_features_only_model(tmp_path, ours_v2):
    features = edgezoo.create_model(V2, features_only=True)
    features.load_state_dict({k: v for k, v in ours_v2.state_dict().items() if k in features.state_dict()})
    path = save(features.state_dict(), tmp_path / "features.safetensors")
    model = edgezoo.create_model(V2, checkpoint=path, features_only=True).eval()
    x = torch.randn(*SIZE)
    for a, b in zip(outputs(model, x), outputs(features.eval(), x)):
        assert torch.equal(a, b)


# --- wrappers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"checkpoint_meta": {"step": 7}, "state_dict": {"model": sd}},
    ],
    ids=["state_dict", "model+extras", "ddp-prefix-in-wrapper", "ddp-prefix", "nested"],
)
def test_wrapped_checkpoints(tmp_path, timm_v3, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(timm_v3.state_dict()), path)
    model = edgezoo.create_model(V3, checkpoint=path).eval()
    x = torch.randn(*SIZE)
    assert_close(outputs(model, x), outputs(timm_v3, x), 1e-4, what="wrapped checkpoint")


def test_run_directory(tmp_path, ours_v2):
    save(ours_v2.state_dict(), tmp_path / "best.safetensors")
    model = edgezoo.create_model(V2, checkpoint=tmp_path).eval()
    x = torch.randn(*SIZE)
    assert torch.equal(outputs(model, x), outputs(ours_v2, x))


# --- safety -----------------------------------------------------------------------------------------------------

class _RunsCommand:
    """Unpickling this calls ``os.system`` — what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CustomObject:
    def __init__(self) -> None:
        self.note = "arbitrary class instance"


def test_code_running_pickle_is_refused(tmp_path, ours_v2):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": ours_v2.state_dict(), "payload": _RunsCommand(marker)}, path)
    with pytest.raises(ValueError, match="refusing"):
        edgezoo.create_model(V2, checkpoint=path)
    assert not marker.exists(), "the checkpoint's code ran"


def test_custom_class_pickle_is_refused(tmp_path, ours_v2):
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": ours_v2.state_dict(), "extra": _CustomObject()}, path)
    with pytest.raises(ValueError, match="refusing"):
        edgezoo.create_model(V2, checkpoint=path)


# --- errors -----------------------------------------------------------------------------------------------------

def test_missing_and_unexpected_keys_are_listed(tmp_path, ours_v2):
    sd = dict(ours_v2.state_dict())
    del sd["stages.3.1.conv_dw.bn.running_var"]
    sd["stages.9.0.extra.weight"] = torch.zeros(3)
    path = save(sd, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError) as info:
        edgezoo.create_model(V2, checkpoint=path)
    message = str(info.value)
    assert "missing keys" in message and "stages.3.1.conv_dw.bn.running_var" in message
    assert "unexpected keys" in message and "stages.9.0.extra.weight" in message


def test_shape_mismatch_is_listed(tmp_path, ours_v2):
    path = save(ours_v2.state_dict(), tmp_path / "v2_035.safetensors")
    expected = r"shape mismatches: .*stages\.1\.0\.conv_pwl\.conv\.weight: checkpoint \(8, 48"
    with pytest.raises(ValueError, match=expected):
        edgezoo.create_model("mobilenetv2_050", checkpoint=path)


def test_wrong_num_classes_is_a_shape_mismatch(tmp_path, timm_v3):
    path = save(timm_v3.state_dict(), tmp_path / "timm.pth")
    with pytest.raises(ValueError, match="classifier.weight"):
        edgezoo.create_model(V3, checkpoint=path, num_classes=10)


def test_other_family_checkpoint_is_rejected(tmp_path, ours_v2):
    path = save(ours_v2.state_dict(), tmp_path / "v2.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        edgezoo.create_model(V3, checkpoint=path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        edgezoo.create_model(V3, checkpoint=tmp_path / "nope.safetensors")


def test_directory_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.safetensors"):
        edgezoo.create_model(V3, checkpoint=tmp_path)


@pytest.mark.parametrize("suffix", [".npz", ".txt", ""])
def test_wrong_suffix(tmp_path, ours_v2, suffix):
    path = tmp_path / f"weights{suffix}"
    torch.save(ours_v2.state_dict(), path)
    with pytest.raises(ValueError, match="suffix"):
        edgezoo.create_model(V2, checkpoint=path)


def test_corrupt_files(tmp_path):
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="safetensors"):
        edgezoo.create_model(V2, checkpoint=bad_st)
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=str(bad_pth.name)):
        edgezoo.create_model(V2, checkpoint=bad_pth)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 1, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="no tensors"):
        edgezoo.create_model(V2, checkpoint=path)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(ValueError, match="state dict"):
        edgezoo.create_model(V2, checkpoint=tensor_only)


# --- weights written by `edgezoo train` describe themselves -----------------------------------------------------

def _trained_run(tmp_path, name="mobilenetv3_small_050", **model_kwargs):
    from edgezoo.train.checkpoints import make_metadata, save_weights

    model = edgezoo.create_model(name, num_classes=10, in_chans=1, img_size=64, **model_kwargs).eval()
    perturb_(model, seed=5)
    meta = make_metadata(model=name, classes=[str(i) for i in range(10)], img_size=64, in_chans=1,
                         model_kwargs=model_kwargs, mean=(0.5,), std=(0.5,), crop_pct=1.0, interpolation="bilinear",
                         weights="best", epoch=3, top1=97.0)
    save_weights(model, tmp_path / "best.safetensors", meta)
    return model


def test_run_directory_fills_classes_channels_and_overrides(tmp_path):
    ref = _trained_run(tmp_path, "vit_tiny_patch16_224", patch_size=8)
    model = edgezoo.create_model("vit_tiny_patch16_224", checkpoint=tmp_path).eval()
    assert model.num_classes == 10
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_run_directory_explicit_arguments_win(tmp_path):
    _trained_run(tmp_path)
    features = edgezoo.create_model("mobilenetv3_small_050", checkpoint=tmp_path, features_only=True)
    assert features.get_submodule(features.default_cfg["first_conv"]).in_channels == 1
    with pytest.raises(ValueError, match="missing keys|shape"):
        edgezoo.create_model("mobilenetv3_small_050", checkpoint=tmp_path, num_classes=5)


def test_run_directory_for_another_model_is_refused(tmp_path):
    _trained_run(tmp_path)
    with pytest.raises(ValueError, match="holds model 'mobilenetv3_small_050', not 'mobilenetv2_035'"):
        edgezoo.create_model("mobilenetv2_035", checkpoint=tmp_path)
