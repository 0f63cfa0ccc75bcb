import io
import json
import tarfile

import pytest
from support.data import encode, make_folder, synthetic_image

from mai_train.data import FAKE, REAL, DataError, is_val, open_dataset


def test_real_fake_folders_any_case(tmp_path):
    make_folder(tmp_path, n=3, real="Real", fake="FAKE")
    ds = open_dataset(tmp_path)
    assert ds.counts() == {"real": 3, "fake": 3}
    assert ds.sources() == [tmp_path.name]


@pytest.mark.parametrize("real,fake", [("authentic", "synthetic"), ("human", "ai"), ("nature", "ai"),
                                       ("0_real", "1_fake"), ("REAL", "FAKE")])
def test_synonyms(tmp_path, real, fake):
    make_folder(tmp_path, n=2, real=real, fake=fake)
    assert open_dataset(tmp_path).counts() == {"real": 2, "fake": 2}


def test_forensynths_families_and_nested_classes(tmp_path):
    make_folder(tmp_path, n=2, real="0_real", fake="1_fake", prefix="ldm")
    make_folder(tmp_path, n=2, real="0_real", fake="1_fake", prefix="progan/car")
    make_folder(tmp_path, n=2, real="nature", fake="ai", prefix="midjourney/train")
    ds = open_dataset(tmp_path)
    assert ds.sources() == ["ldm", "midjourney", "progan"]
    assert len(ds) == 12
    labels = {it.relpath: it.label for it in ds.items}
    assert labels["progan/car/0_real/0_real_000.png"] == REAL
    assert labels["ldm/1_fake/1_fake_001.png"] == FAKE


def _tar(tmp_path, name, mode):
    path = tmp_path / name
    with tarfile.open(path, mode) as tf:
        for label, folder in ((0, "./REAL"), (1, "./FAKE")):
            for i in range(3):
                data = encode(synthetic_image(label, i), "JPEG")
                info = tarfile.TarInfo(f"{folder}/{i}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("README.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    return path


@pytest.mark.parametrize("name,mode", [("set.tar", "w"), ("set.tar.gz", "w:gz"), ("set.tgz", "w:gz")])
def test_tar_files_read_in_place(tmp_path, name, mode):
    ds = open_dataset(_tar(tmp_path, name, mode))
    assert ds.counts() == {"real": 3, "fake": 3}
    assert ds.name == "set"
    it = ds.items[0]
    assert it.relpath == "FAKE/0.jpg"  # './' stripped: the split key is stable
    assert ds.read_bytes(it)[:2] == b"\xff\xd8"


def test_csv_and_jsonl_manifests(tmp_path):
    make_folder(tmp_path / "imgs", n=2)
    (tmp_path / "m.csv").write_text(
        "path,label,source\nimgs/real/real_000.png,real,cam\nimgs/fake/fake_000.png,1,sdxl\n")
    ds = open_dataset(tmp_path / "m.csv")
    assert [(i.label, i.source) for i in ds.items] == [(REAL, "cam"), (FAKE, "sdxl")]
    assert ds.read_bytes(ds.items[0])[:4] == b"\x89PNG"
    rows = [{"path": "imgs/real/real_001.png", "label": "authentic"},
            {"path": "imgs/fake/fake_001.png", "label": "fake"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = open_dataset(tmp_path / "m.jsonl")
    assert [i.label for i in ds.items] == [REAL, FAKE] and ds.sources() == ["m"]


@pytest.mark.parametrize("text,msg", [("path,label\na.png,maybe\n", "neither real nor fake"),
                                      ("a.png\n", "expected path,label")])
def test_bad_manifests_say_why(tmp_path, text, msg):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=msg):
        open_dataset(tmp_path / "m.csv")


def test_unlabelled_or_missing_data_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.png").write_bytes(encode(synthetic_image(0, 0)))
    with pytest.raises(DataError, match="real/ and fake/"):
        open_dataset(tmp_path / "x")
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        open_dataset(tmp_path / "f.txt")


def test_split_is_a_pure_function_of_the_path(tmp_path):
    make_folder(tmp_path, n=60)
    ds = open_dataset(tmp_path)
    val = {i.relpath for i in ds.split("val")}
    assert 0 < len(val) < 40
    assert val == {i.relpath for i in ds.items if is_val(i.relpath)}
    # Adding files does not move existing ones between splits.
    make_folder(tmp_path, n=80)
    assert val <= {i.relpath for i in open_dataset(tmp_path).split("val")}
    assert not val & {i.relpath for i in ds.split("train")}


def test_fingerprint_changes_with_content(tmp_path):
    make_folder(tmp_path, n=3)
    a = open_dataset(tmp_path).fingerprint()
    assert a == open_dataset(tmp_path).fingerprint()
    (tmp_path / "fake" / "extra.png").write_bytes(encode(synthetic_image(1, 99)))
    assert open_dataset(tmp_path).fingerprint() != a


def test_broken_files_are_counted_not_fatal(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from mai.preprocess import CIFAKE_SPEC
    from mai_train.evaluate import score_torch_items
    from mai_train.registry import create_model

    make_folder(tmp_path, n=2)
    (tmp_path / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "real" / "empty.jpg").write_bytes(b"")
    ds = open_dataset(tmp_path)
    scored = score_torch_items(create_model("mai_cnn"), ds, ds.items, CIFAKE_SPEC, batch_size=3)
    assert len(scored.scores) == 4
    assert sorted(p for p, _ in scored.unreadable) == ["fake/broken.png", "real/empty.jpg"]


def test_a_root_manifest_with_a_split_column_splits_folders_and_tars(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    rows = ["path,label,source,split"]
    for i, rel in enumerate(sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))):
        rows.append(f"{rel},{rel.split('/')[0]},gen{i % 2},{['train', 'val', 'test_generator'][i % 3]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    tar = tmp_path / "d.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted(root.rglob("*")):
            tf.add(p, arcname=p.relative_to(root).as_posix(), recursive=False)
    for ds in (open_dataset(root), open_dataset(tar)):
        assert ds.own_splits == ["test_generator", "train", "val"] and ds.split_rule == "the manifest's split column"
        assert [len(ds.split(s)) for s in ("train", "val", "test_generator", "all")] == [3, 3, 2, 8]
        assert {it.source for it in ds.items} == {"gen0", "gen1"}  # the manifest's source wins
        with pytest.raises(DataError, match="test_generator, train, val"):
            ds.split("holdout")
    (root / "manifest.csv").write_text("\n".join(rows[:-1]) + "\n")  # one image not listed
    with pytest.raises(DataError, match="is not in manifest.csv"):
        open_dataset(root)


def test_data_check_reports_bad_data(tmp_path):
    """Undecodable files, copies under both labels, across splits (or data sets) and
    within a split: each found and named; `mai data check` exits 1 on any."""
    from click.testing import CliRunner

    from mai_train.cli import cli
    from mai_train.data_check import check

    a, b = tmp_path / "a", tmp_path / "b"
    names = [f"img{i:03d}.png" for i in range(60)]
    val = next(n for n in names if is_val(f"real/{n}"))
    train = [n for n in names if not is_val(f"real/{n}") and not is_val(f"fake/{n}")][:2]
    for root in (a, b):
        (root / "real").mkdir(parents=True)
        (root / "fake").mkdir(parents=True)
    photo, other, third = (encode(synthetic_image(0, s)) for s in (1, 2, 3))
    (a / "real" / train[0]).write_bytes(photo)
    (a / "fake" / train[0]).write_bytes(photo)  # the same file under both labels
    (a / "real" / val).write_bytes(other)
    (a / "real" / train[1]).write_bytes(other)  # in train and val
    (b / "real" / "x.png").write_bytes(third)
    (b / "real" / "y.png").write_bytes(third)  # twice in one split (both hash to train or not: same set)
    (b / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rep = check([open_dataset(a), open_dataset(b)])
    assert rep.files == 7 and [n for n, _ in rep.unreadable] == ["b:fake/broken.png"]
    assert [sorted(g) for g in rep.both_labels] == [[f"a:train:fake/{train[0]}", f"a:train:real/{train[0]}"]]
    assert len(rep.across_splits) + len(rep.same_split) == 2 and rep.problems == 4
    assert any(f"a:val:real/{val}" in g for g in rep.across_splits)
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(a), "--data", str(b)])
    assert r.exit_code == 1 and "1 unreadable, 1 files under both labels" in r.output
    clean = tmp_path / "clean"
    (clean / "real").mkdir(parents=True)
    (clean / "real" / "p.png").write_bytes(photo)
    (clean / "fake").mkdir()
    (clean / "fake" / "q.png").write_bytes(other)
    r = CliRunner().invoke(cli, ["data", "check", "--data", str(clean), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["files"] == 2
