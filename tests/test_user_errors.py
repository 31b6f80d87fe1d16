"""What a new user hits (issue 15, items 3, 5 and 6): one-line errors instead of tracebacks, output files with the
usual permissions, and help/README text that answers the questions a first run raises.

CLI checks go through ``edgezoo.cli.main`` in-process (the console script's entry point; an escaping exception
fails the test) and, for the end-to-end ones, through a real ``python -m edgezoo`` process.
"""
from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edgezoo
from edgezoo.checkpoint import atomic_torch_save, atomic_write_bytes, save_safetensors
from edgezoo.cli import build_parser, main
from edgezoo.devices import resolve_device

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL = "mobilenetv1_025"  # the smallest, quickest registered convnet
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
HAS_PROC = Path("/proc/self/status").is_file()


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors exit directly
        code = exc.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``edgezoo ARGS``; assert exit 2 and exactly one stderr line without a traceback; return that line."""
    code, _, err = run_main(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture
def png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("L", (8, 8), color=128).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch digits run written by a real process under umask 022 (its files' modes are checked below)."""
    out = tmp_path_factory.mktemp("run") / "out"
    r = subprocess.run([sys.executable, "-m", "edgezoo", "train", "--model", MODEL, "--img-size", "32",
                        "--train-subset", "64", "--val-subset", "32", "--batch-size", "32", "--epochs", "1",
                        "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


# ------------------------------------------------------------------------------------- item 3: devices
def _device_command(command: str, tmp_path, png) -> list[str]:
    """The arguments of ``command`` before ``--device``: each command that takes a device, run on a missing run."""
    return {"eval": ["eval", "--checkpoint", str(tmp_path / "run")],
            "train": ["train", "--model", MODEL, "--epochs", "1", "--out", str(tmp_path / "o"), "--no-progress"],
            "predict": ["predict", str(png), "--checkpoint", str(tmp_path / "run")]}[command]


@pytest.mark.parametrize("command", ["eval", "train", "predict"])
def test_unknown_device_is_one_line(command, tmp_path, png, capsys):
    args = _device_command(command, tmp_path, png)
    line = one_line_error([*args, "--device", "tpu"], capsys)
    assert "'tpu'" in line and "cpu" in line and "cuda" in line
    assert not (tmp_path / "o").exists()  # refused before the run folder is made


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("command", ["eval", "train", "predict"])
def test_cuda_without_gpu_is_one_line(command, tmp_path, png, capsys):
    args = _device_command(command, tmp_path, png)
    line = one_line_error([*args, "--device", "cuda"], capsys)
    assert "'cuda'" in line and "no CUDA device" in line


def test_resolve_device_names_the_argument_and_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'tpu' is not a device .*allowed: cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device 'meta'"):
        resolve_device("meta")
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(3)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda:0")


def test_train_refuses_an_empty_device(tmp_path, capsys):
    line = one_line_error(["train", "--model", MODEL, "--device", "", "--out", str(tmp_path / "o")], capsys)
    assert "device must be" in line


# ------------------------------------------------------------------------------ item 3: junk checkpoints
@pytest.mark.parametrize("content", [b"just some notes\n", b"import os\n", b"", b"PK\x03\x04 not a zip",
                                     b"\x80\x02 broken pickle", b"\x89PNG\r\n\x1a\n"])
def test_create_model_on_a_junk_pth_raises_a_clear_value_error(tmp_path, content):
    junk = tmp_path / "notes.pth"
    junk.write_bytes(content)
    with pytest.raises(ValueError) as info:
        edgezoo.create_model(MODEL, checkpoint=junk)
    msg = str(info.value)
    assert str(junk) in msg and "expected a state dict" in msg and "safetensors" in msg


def test_unsafe_pickle_is_still_refused_as_unsafe(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"x": argparse.Namespace(a=1)}, bad)  # loading it needs arbitrary unpickling
    with pytest.raises(ValueError, match="refusing to load"):
        edgezoo.create_model(MODEL, checkpoint=bad)


@pytest.mark.parametrize("command", [["export", MODEL, "--format", "onnx", "--out", "{tmp}/m.onnx"],
                                     ["quantize", MODEL, "--out", "{tmp}/q.onnx"]])
def test_cli_junk_checkpoint_is_one_line(command, tmp_path, capsys):
    junk = tmp_path / "notes.pth"
    junk.write_text("just some notes\n")
    args = [a.format(tmp=tmp_path) for a in command] + ["--checkpoint", str(junk)]
    line = one_line_error(args, capsys)
    assert str(junk) in line and "not a PyTorch checkpoint" in line


# ---------------------------------------------------------------------------- item 3: sizes and overrides
def test_export_huge_img_size_is_refused_before_allocating(tmp_path, capsys):
    line = one_line_error(["export", "mobilenetv2_100", "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                           "--img-size", "100000"], capsys)
    assert "--img-size 100000 needs up to" in line and re.search(r"use --img-size \d+ or less", line)
    assert not (tmp_path / "m.onnx").exists()


def test_check_fits_memory_suggests_a_size_that_fits(monkeypatch):
    from edgezoo.analysis import zoo

    monkeypatch.setattr(zoo, "available_memory_bytes", lambda: 200 * 2**20)  # a 200 MiB machine
    zoo.check_fits_memory(MODEL, 224)  # the model's own size: not even profiled
    with pytest.raises(ValueError, match=r"img_size 2048 needs up to .* use img_size (\d+) or less") as info:
        zoo.check_fits_memory(MODEL, 2048)
    fits = int(re.search(r"use img_size (\d+)", str(info.value)).group(1))
    assert 224 < fits < 2048
    zoo.check_fits_memory(MODEL, fits)  # the suggested size passes the same check


def test_out_of_memory_during_a_command_is_one_line(monkeypatch, capsys):
    from edgezoo.cli import analysis

    def oom(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 120000000000 bytes")

    monkeypatch.setattr(analysis, "cmd_info", oom)
    line = one_line_error(["info", MODEL], capsys)
    assert line.startswith("edgezoo: error: out of memory") and "smaller" in line


def test_info_width_mult_names_the_families_that_take_it(capsys):
    line = one_line_error(["info", "vit_tiny_patch16_224", "--width-mult", "0.5"], capsys)
    assert "--width-mult applies to the mobilenetv1, mobilenetv2, mobilenetv3 families" in line
    assert "_create_vit" not in line and "vit_small_patch16_224" in line
    code, out, _ = run_main(["info", "mobilenetv2_100", "--width-mult", "0.5", "--json"], capsys)
    assert code == 0 and '"params"' in out


def test_create_model_unknown_override_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"'vit_tiny_patch16_224' \(vit\) takes no override 'width_mult'; its "
                                        r"overrides are: patch_size, global_pool; 'width_mult' applies to the "
                                        r"mobilenetv1, mobilenetv2, mobilenetv3 families"):
        edgezoo.create_model("vit_tiny_patch16_224", width_mult=0.5)
    with pytest.raises(TypeError, match="takes no override 'nonsense'"):
        edgezoo.create_model(MODEL, nonsense=1)
    assert edgezoo.create_model(MODEL, width_mult=0.5, num_classes=3).num_classes == 3


# ------------------------------------------------------------------------------ item 3: output paths
@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc, where no file can be created")
def test_unwritable_out_names_the_users_path_not_the_temp_file(capsys):
    with pytest.raises(OSError) as info:
        atomic_write_bytes("/proc/edgezoo-test.onnx", b"x")
    assert info.value.filename == "/proc/edgezoo-test.onnx" and ".tmp" not in str(info.value)
    line = one_line_error(["export", MODEL, "--format", "onnx", "--out", "/proc/x.onnx"], capsys)
    assert "/proc" in line and ".tmp" not in line and ".x.onnx." not in line


def test_bench_plot_and_eval_png_types_are_checked_up_front(tmp_path, capsys):
    line = one_line_error(["bench", MODEL, "--plot", str(tmp_path / "p.txt")], capsys)
    assert "--plot must end in .png, .pdf or .svg" in line
    line = one_line_error(["eval", "--checkpoint", str(tmp_path), "--confusion-png", str(tmp_path / "c.txt")], capsys)
    assert "--confusion-png must name a .png file" in line


# -------------------------------------------------------------------------------------- item 5: file modes
@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "b.pt")
    save_safetensors({"w": torch.zeros(2)}, tmp_path / "c.safetensors")
    for name in ("a.bin", "b.pt", "c.safetensors"):
        assert mode(tmp_path / name) == expected, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_rewrite_keeps_an_existing_files_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600


def test_exports_plots_and_data_pngs_get_the_umask_mode(tmp_path, umask):
    from edgezoo.analysis import plot_pareto
    from edgezoo.deploy import export_model
    from edgezoo.train import write_digits_imagefolder

    umask(0o022)
    model = edgezoo.create_model(MODEL, num_classes=10).eval()
    export_model(model, tmp_path / "m.pt", format="torchscript", example_input=torch.randn(1, 3, 32, 32))
    plot_pareto([dict(name="a", latency_ms=1.0, macs=1e6, top1=70.0), dict(name="b", latency_ms=2.0, macs=2e6,
                                                                          top1=75.0)], tmp_path / "p.png")
    write_digits_imagefolder(tmp_path / "digits")
    files = [tmp_path / "m.pt", tmp_path / "p.png", *sorted((tmp_path / "digits").rglob("*.png"))[:20]]
    assert all(mode(f) == 0o644 for f in files), {str(f): oct(mode(f)) for f in files}


def test_onnx_export_gets_the_umask_mode(tmp_path, umask):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (edgezoo[export])")
    from edgezoo.deploy import export_model

    umask(0o022)
    model = edgezoo.create_model(MODEL, num_classes=10).eval()
    export_model(model, tmp_path / "m.onnx", format="onnx", example_input=torch.randn(1, 3, 32, 32))
    assert mode(tmp_path / "m.onnx") == 0o644


def test_training_run_files_get_the_umask_mode(tiny_run):
    files = sorted(p for p in tiny_run.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"best.safetensors", "last.safetensors", "state.pt", "config.yaml",
                                       "metrics.csv", "curves.png", "report.json"}
    assert all(mode(p) == 0o644 for p in files), {p.name: oct(mode(p)) for p in files}


# ------------------------------------------------------------------------------------ item 6: predict DIR
def test_predict_accepts_folders_recursively_in_sorted_order(tiny_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    for rel in ("b.png", "a.png", "sub/c.png", "sub/deeper/d.jpg"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=len(rel) * 10).save(folder / rel)
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "single.png"
    Image.new("L", (8, 8)).save(single)
    code, out, err = run_main(["predict", str(single), str(folder), "--checkpoint", str(tiny_run), "--topk", "2"],
                              capsys)
    assert code == 0, err
    shown = [line.split(": ", 1)[0] for line in out.strip().splitlines()]
    assert shown == [str(single), *(str(folder / r) for r in ("a.png", "b.png", "sub/c.png", "sub/deeper/d.jpg"))]


def test_predict_empty_folder_is_one_line(tiny_run, tmp_path, capsys):
    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "x" / "readme.txt").write_text("no images here")
    line = one_line_error(["predict", str(tmp_path / "empty"), "--checkpoint", str(tiny_run)], capsys)
    assert "holds no image files" in line and ".png" in line


# ---------------------------------------------------------------------------------- item 6: help texts
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    fmt = parser._get_formatter()
    fmt.add_argument(action)
    return " ".join(fmt.format_help().split())  # unwrap the columns


def _shown(default: object) -> str:
    return ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def test_every_option_of_every_command_has_help_and_shows_its_default():
    problems = []
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"{label}: no help text")
                continue
            default = action.default
            if default not in (None, False, argparse.SUPPRESS) and _shown(default) not in _rendered(parser, action):
                problems.append(f"{label}: default {default!r} not shown")
            # train's flags default to "absent" so the recipe decides: their help must say what it decides
            takes_value = action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction)
            if (default is argparse.SUPPRESS and takes_value and action.dest not in ("model_kwarg",)
                    and "default" not in action.help.lower()):
                problems.append(f"{label}: help does not say the default")
    assert not problems, "\n".join(problems)


def test_help_shows_defaults_named_in_the_issue(capsys):
    for args, needles in [(["predict", "--help"], ["--topk", "(default: 5)", "--checkpoint CHECKPOINT run directory"]),
                          (["bench", "--help"], ["(default: eager)", "(default: 5)", "(default: 20)"]),
                          (["quantize", "--help"], ["(default: 128)", "(default: minmax)"]),
                          (["demo", "--help"], ["(default: mobilenetv3_small_050)", "(default: 12)",
                                                "(default: runs/demo)"]),
                          (["data", "--help"], ["--out OUT folder to write"])]:
        code, out, _ = run_main(args, capsys)
        text = " ".join(out.split())
        assert code == 0 and all(n in text for n in needles), (args, text)


def test_tables_explain_engines_and_compute_bound(capsys):
    from edgezoo.cli.deploy import engine_footnote

    note = engine_footnote(["openvino/pinned", "eager", "openvino/pinned"], "timm")
    assert "openvino/pinned: OpenVINO with its worker threads pinned to CPU cores" in note
    assert note.count("openvino/pinned:") == 1 and "÷timm" in note
    code, out, _ = run_main(["roofline", MODEL], capsys)
    assert code == 0
    assert "compute-bound: share of the predicted latency" in " ".join(out.split())


# ------------------------------------------------------------------------------------------ item 6: README
def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [ln.split("  #")[0].strip() for block in blocks for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("make ")]


def test_readme_says_how_to_run_edgezoo_after_make_demo():
    text = README.read_text()
    head = text[: text.index("## Library")]
    assert ".venv/bin/edgezoo" in head and "source .venv/bin/activate" in head


def test_readme_commands_only_use_folders_and_files_earlier_commands_create():
    """A run folder or data folder a README command reads must be written by a README command above it."""
    made: set[str] = set()
    missing = []
    for cmd in _readme_commands():
        argv = cmd.split()
        reads = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--checkpoint", "--teacher-checkpoint")]
        if "--resume" in argv:
            reads.append(argv[argv.index("--out") + 1])
        if argv[:2] == ["edgezoo", "predict"]:
            reads += [a for a in argv[2:argv.index("--checkpoint")] if not a.startswith("-")]
        if "--data" in argv and argv[argv.index("--data") + 1] != "digits":
            reads.append(argv[argv.index("--data") + 1])
        missing += [f"{cmd!r} reads {r!r}" for r in reads if not any(r == m or r.startswith(m + "/") for m in made)]
        if "--out" in argv and "--resume" not in argv:
            made.add(argv[argv.index("--out") + 1])
    assert not missing, missing


def test_readme_commands_parse(capsys):
    """Every README edgezoo command is accepted by the parser (flags, choices, types)."""
    parser = build_parser()
    for cmd in _readme_commands():
        argv = cmd.split()
        if argv[0] == "torchrun":
            argv = ["edgezoo", *argv[argv.index("edgezoo") + 1:]]
        if argv[0] != "edgezoo":
            continue
        argv = [a.strip("'") for a in argv[1:]]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"README command {cmd!r} does not parse: {capsys.readouterr().err} ({exc.code})")
