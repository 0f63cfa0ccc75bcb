"""Training end to end on generated images, the artifact, and `mai eval`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.data import make_folder

torch = pytest.importorskip("torch", reason="training tests need the train extra")

from mai.artifact import ArtifactError, load_artifact  # noqa: E402
from mai.preprocess import PreprocessSpec, Step  # noqa: E402
from mai_train.checkpoint import load_torch_model  # noqa: E402
from mai_train.cli import cli  # noqa: E402
from mai_train.data import open_dataset  # noqa: E402
from mai_train.train_cnn import Augment, TrainConfig, train_cnn  # noqa: E402

SMALL = PreprocessSpec(steps=(Step((32, 32), "box"), Step((200, 200), "bilinear"))).to_dict()


def test_a_few_steps_lower_the_loss(tmp_path):
    from mai.preprocess_torch import finish
    from mai_train.evaluate import decode_item
    from mai_train.registry import create_model

    torch.manual_seed(0)
    ds = open_dataset(make_folder(tmp_path, n=8))
    spec = PreprocessSpec.from_dict(SMALL)
    x = torch.from_numpy(np.stack([decode_item(ds, it, spec, upto=1) for it in ds.items]))
    y = torch.tensor([float(it.label) for it in ds.items])
    model = create_model("mai_cnn")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xx = finish(x, spec)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xx), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("data"), n=32)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(data=str(root), out=str(out), epochs=2, batch_size=16, optimizer="adamw", lr=3e-4,
                      threads=2, checkpoint_every=3, augment=Augment(shift=0.0), spec=SMALL)
    train_cnn(cfg)
    return root, out


def test_training_writes_a_complete_artifact(trained):
    root, out = trained
    art = load_artifact(out)
    meta = art.meta
    assert meta["schema"] == "mai.model/1" and meta["model_id"].startswith("tiny@")
    assert meta["architecture"]["name"] == "mai_cnn"
    assert meta["preprocess"] == SMALL
    lo, hi = meta["uncertain"]
    assert 0.0 <= lo <= meta["threshold"] <= hi <= 1.0
    assert "split_rule" in meta["data"] and meta["data"]["fingerprint"] == open_dataset(root).fingerprint()
    assert [h["epoch"] for h in meta["train"]["history"]] == [1, 2]
    assert meta["metrics"]["val"]["accuracy"] >= 0.9  # the generated classes are easy
    assert "torch" in meta["versions"]
    model = load_torch_model(art)
    assert sum(p.numel() for p in model.parameters()) == 4_827_365


def test_rerunning_a_finished_run_resumes_not_restarts(trained):
    root, out = trained
    before = load_artifact(out).meta["train"]["history"]
    cfg = TrainConfig(data=str(root), out=str(out), epochs=2, batch_size=16, optimizer="adamw", lr=3e-4,
                      threads=2, checkpoint_every=3, augment=Augment(shift=0.0), spec=SMALL)
    train_cnn(cfg)
    assert load_artifact(out).meta["train"]["history"] == before


def test_resume_from_mid_epoch_checkpoint(tmp_path):
    root = make_folder(tmp_path / "d", n=16)
    kw = dict(data=str(root), batch_size=8, optimizer="adamw", lr=3e-4, threads=2, checkpoint_every=2,
              augment=Augment(shift=0.0), spec=SMALL, epochs=1)
    full = tmp_path / "full"
    train_cnn(TrainConfig(out=str(full), **kw))
    # Simulate a kill after the checkpoint at step 2: keep that state only.
    part = tmp_path / "part"
    from mai_train import train_cnn as train_mod

    calls = {"n": 0}
    real = train_mod._atomic_save

    def save_then_die(obj, path):
        real(obj, path)
        calls["n"] += 1
        if obj["step_in_epoch"] == 2:
            raise KeyboardInterrupt

    train_mod._atomic_save = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train_cnn(TrainConfig(out=str(part), **kw))
    finally:
        train_mod._atomic_save = real
    train_cnn(TrainConfig(out=str(part), **kw))
    a = load_torch_model(load_artifact(full)).state_dict()
    b = load_torch_model(load_artifact(part)).state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_mismatched_run_settings_are_refused(trained):
    from mai_train.train_cnn import TrainError

    root, out = trained
    with pytest.raises(TrainError, match="epochs"):
        train_cnn(TrainConfig(data=str(root), out=str(out), epochs=5, batch_size=16, spec=SMALL))


def test_mai_eval_cli(trained):
    root, out = trained
    r = CliRunner().invoke(cli, ["eval", "--model", str(out), "--data", str(root), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["n"] == 64 and rep["accuracy"] >= 0.9
    assert rep["model"] == load_artifact(out).model_id
    assert set(rep["per_source"]) == {root.name}
    r = CliRunner().invoke(cli, ["eval", "--model", str(out), "--data", str(root), "--split", "val"])
    assert r.exit_code == 0 and "AUC" in r.stdout and "uncertainty band" in r.stdout


def test_corrupt_or_mismatched_weights_are_refused(trained, tmp_path):
    import shutil

    _, out = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_torch_model(load_artifact(bad))
    meta = json.loads((bad / "mai.json").read_text())
    meta.pop("weights_sha256")
    (bad / "mai.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load_torch_model(load_artifact(bad))
    from safetensors.torch import save_file

    save_file({"head.1.weight": torch.zeros(3, 3)}, str(w))
    with pytest.raises(ArtifactError, match="does not fit architecture"):
        load_torch_model(load_artifact(bad))
    meta["schema"] = "other/9"
    (bad / "mai.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="schema"):
        load_artifact(bad)


def test_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    r = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path / "missing"), "--data", str(tmp_path)])
    assert r.exit_code != 0
    assert isinstance(r.exception, ArtifactError)


def test_an_architecture_brings_its_own_spec(tmp_path):
    """Without a spec, a run uses its architecture's; the artifact and its ONNX export carry it."""
    pytest.importorskip("onnx")
    from export.onnx import export_onnx
    from mai.session import open_model
    from mai_train.models.resnet import PREPROCESS

    root = make_folder(tmp_path / "d", n=8)
    out = train_cnn(TrainConfig(data=str(root), out=str(tmp_path / "r"), arch="mai_resnet_tiny", epochs=1,
                                batch_size=4, threads=2, optimizer="adamw", lr=1e-3))
    art = load_artifact(out)
    assert PreprocessSpec.from_dict(art.meta["preprocess"]) == PREPROCESS
    export_onnx(out, ("fp32",))
    m = open_model(out, "cpu")
    assert m.spec == PREPROCESS
    _, p = m.predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert p.shape == (2,)
