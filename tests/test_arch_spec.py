"""Architecture spec files: round trips, building through create_model, errors a person can act on."""
from __future__ import annotations

import pytest
import torch
import yaml

import edgezoo
from edgezoo.checkpoint import save_safetensors
from edgezoo.models.arch_spec import (
    ARCH_FORMAT,
    config_from_dict,
    config_to_dict,
    load_arch_spec,
    make_arch_spec,
    save_arch_spec,
)
from edgezoo.models.mobilenet_v4 import CONV_MEDIUM, CONV_SMALL, HYBRID_MEDIUM, MobileNetV4Config


@pytest.mark.parametrize("config", [CONV_SMALL, CONV_MEDIUM, HYBRID_MEDIUM])
def test_config_dict_round_trip(config: MobileNetV4Config) -> None:
    d = config_to_dict(config)
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == config


def test_spec_builds_the_same_model_as_the_registered_variant(tmp_path) -> None:
    spec = make_arch_spec(CONV_SMALL, name="conv-s-as-spec", img_size=64)
    path = save_arch_spec(spec, tmp_path / "arch.yaml")
    text = path.read_text()
    assert text.startswith(f"format: {ARCH_FORMAT}\nkind: mobilenetv4\n")
    assert "{block: ExtraDW, out_chs: 96, start_dw_kernel: 5, mid_dw_kernel: 5" in text  # one block per line
    torch.manual_seed(0)
    ref = edgezoo.create_model("mobilenetv4_conv_small", num_classes=10).eval()
    model = edgezoo.create_model(str(path), num_classes=10).eval()
    assert model.state_dict().keys() == ref.state_dict().keys()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), ref(x))
    # the model contract
    assert model.default_cfg["input_size"] == (3, 64, 64)
    assert model.num_features == 1280 and [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    feats = edgezoo.create_model(str(path), features_only=True, out_indices=(1, 3))
    assert [f.shape[1] for f in feats(x)] == [32, 96]
    # the dict form works too
    assert edgezoo.create_model(load_arch_spec(path), num_classes=4)(x).shape == (2, 4)


def test_save_then_create_model_with_checkpoint_gives_the_same_outputs(tmp_path) -> None:
    spec = make_arch_spec(HYBRID_MEDIUM, name="hm", img_size=64)
    path = save_arch_spec(spec, tmp_path / "arch.yaml")
    model = edgezoo.create_model(str(path), num_classes=7).eval()
    save_safetensors(model.state_dict(), tmp_path / "w.safetensors")
    again = edgezoo.create_model(str(path), num_classes=7, checkpoint=tmp_path / "w.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x))
    other = save_arch_spec(make_arch_spec(CONV_SMALL, name="cs", img_size=64), tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="does not match architecture spec"):
        edgezoo.create_model(str(other), num_classes=7, checkpoint=tmp_path / "w.safetensors")


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("a: [1, 2", "not valid YAML"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("kind: mobilenetv4\nimg_size: 32\n", "no 'format' key"),
    ("format: edgezoo-arch/2\nkind: mobilenetv4\nimg_size: 32\n", "format version 'edgezoo-arch/2'"),
    ("format: edgezoo-train/1\n", "not an edgezoo architecture spec"),
    (f"format: {ARCH_FORMAT}\nkind: resnet\nimg_size: 32\n", "unknown kind 'resnet'"),
    (f"format: {ARCH_FORMAT}\nkind: mobilenetv4\nimg_size: 32\nconfig: {{stem_chs: 8, stages: [[{{block: Bogus}}]]}}\n",
     "unknown block 'Bogus'"),
    (f"format: {ARCH_FORMAT}\nkind: mobilenetv4\nimg_size: 32\n"
     "config: {stem_chs: 8, stages: [[{block: IB, out_chs: 8, start_dw_kernel: 3, mid_dw_kernel: 3, expand_ratio: 2}]]}\n",
     "IB block needs start_dw_kernel absent"),
    (f"format: {ARCH_FORMAT}\nkind: mobilenetv4\nimg_size: 32\n"
     "config: {stem_chs: 8, stages: [[{block: FFN, out_chs: 8}]]}\n", "expand_ratio"),
    (f"format: {ARCH_FORMAT}\nkind: mobilenetv4\nimg_size: 4\nconfig: {{stem_chs: 8, stages: []}}\n", "img_size"),
])
def test_bad_specs_are_refused_with_a_clear_message(tmp_path, text: str, message: str) -> None:
    p = tmp_path / "arch.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_arch_spec(p)
    with pytest.raises(ValueError, match=message):
        edgezoo.create_model(str(p))


def test_missing_spec_file() -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        edgezoo.create_model("/nonexistent/arch.yaml")


def test_spec_loading_needs_no_search_code(tmp_path) -> None:
    """Building a spec must not import edgezoo.search (a found model is an ordinary model)."""
    import subprocess
    import sys

    path = save_arch_spec(make_arch_spec(CONV_SMALL, name="cs", img_size=64), tmp_path / "arch.yaml")
    code = ("import sys, edgezoo; m = edgezoo.create_model(sys.argv[1], num_classes=3); "
            "assert not any(k.startswith('edgezoo.search') for k in sys.modules), 'search imported'")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
