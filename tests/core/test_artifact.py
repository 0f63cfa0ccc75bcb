"""The one reader of model folders' mai.json (detectors and VLM adapters), torch-free."""

import json

import pytest

from mai.artifact import ArtifactError, load_artifact, shipped_models
from mai.vlm import VLMError, is_vlm_adapter, read_adapter_meta


def _folder(tmp_path, name, meta):
    d = tmp_path / name
    d.mkdir()
    (d / "mai.json").write_text(json.dumps(meta) if not isinstance(meta, str) else meta, encoding="utf-8")
    return d


def test_shipped_models_read_through_the_card_reader():
    for name, path in shipped_models().items():
        art = load_artifact(name)
        assert art.path == path and art.model_id.startswith(name + "@")
        assert load_artifact(path / "mai.json").model_id == art.model_id  # the file names its folder


def test_each_kind_of_folder_says_where_it_goes_instead(tmp_path):
    adapter = _folder(tmp_path, "adapter", {"schema": "mai.vlm/1"})
    with pytest.raises(ArtifactError, match=r"schema 'mai.vlm/1'; a MAI model folder has 'mai.model/1' "
                                            r"\(this is a VLM adapter: give it to --vlm-adapter\)"):
        load_artifact(adapter)
    model = load_artifact("mai-cnn-cifake").path
    with pytest.raises(VLMError, match=r"\(this is a model: give it to --model\)"):
        read_adapter_meta(model)
    assert not is_vlm_adapter(model) and not is_vlm_adapter(tmp_path / "nowhere")


@pytest.mark.parametrize(("meta", "error"), [
    ("{not json", "is not readable JSON"),
    ([1, 2], "has schema None"),
    ({"schema": "mai.model/1", "model_id": "x"}, "lacks 'architecture'; re-create it with `mai train`"),
])
def test_a_broken_model_card_is_one_clear_error(tmp_path, meta, error):
    with pytest.raises(ArtifactError, match=error):
        load_artifact(_folder(tmp_path, "m", meta))


def test_adapter_card_errors_name_the_fix(tmp_path):
    broken = _folder(tmp_path, "a", {"schema": "mai.vlm/1", "model_id": "x"})
    assert is_vlm_adapter(broken)  # its schema says what it is; reading it says what is missing
    with pytest.raises(VLMError, match="lacks 'base'; re-create the adapter with `mai train vlm`"):
        read_adapter_meta(broken)
    bare = tmp_path / "peft-only"
    bare.mkdir()
    (bare / "adapter_config.json").write_text("{}")
    with pytest.raises(VLMError, match="no mai.json .a peft adapter without MAI's calibration"):
        read_adapter_meta(bare)
    full = {"schema": "mai.vlm/1", "model_id": "x", "base": {}, "question": "q", "threshold": 0.5,
            "answer_token_ids": {}}
    with pytest.raises(VLMError, match="adapter weights are missing"):
        read_adapter_meta(_folder(tmp_path, "no-weights", full))
    ok = _folder(tmp_path, "ok", full)
    (ok / "adapter_config.json").write_text("{}")
    assert read_adapter_meta(ok)["model_id"] == "x" and is_vlm_adapter(ok / "mai.json")
