"""SubnetSpec: construction, validation against a base shape, YAML / JSON round trips."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import yaml

from nas.models.registry import base_shape
from nas.spec import BaseShape, SpecError, SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = BaseShape(num_layers=4, num_heads=4, head_size=8, hidden_size=32, ffn_size=37, max_positions=512)


def good_spec(**changes) -> SubnetSpec:
    fields = dict(layers=(0, 2, 3), heads=(4, 1, 3), ffn=(37, 5, 20), hidden=24, context=128)
    fields.update(changes)
    return SubnetSpec(**fields)


# ---- base shapes ---------------------------------------------------------------------------


def test_base_shape_from_bert_config(tiny_bert):
    shape = base_shape(tiny_bert().config)
    assert shape == BaseShape(num_layers=2, num_heads=4, head_size=8, hidden_size=32, ffn_size=37, max_positions=512)


def test_base_shape_from_roberta_config_excludes_reserved_positions(tiny_roberta):
    # RoBERTa numbers positions from pad_token_id + 1 = 2: 514 rows hold 512 usable positions.
    shape = base_shape(tiny_roberta().config)
    assert shape.max_positions == 512
    assert (shape.num_layers, shape.num_heads, shape.head_size, shape.hidden_size, shape.ffn_size) == (2, 4, 8, 32, 37)


def test_base_shape_from_distilbert_config(tiny_distilbert):
    shape = base_shape(tiny_distilbert().config)
    assert shape == BaseShape(num_layers=2, num_heads=4, head_size=8, hidden_size=32, ffn_size=37, max_positions=512)


def test_base_shape_rejects_unknown_family():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match=r"model_type='gpt2' is not supported.*bert.*distilbert.*roberta"):
        base_shape(GPT2Config())


# ---- construction --------------------------------------------------------------------------


def test_full_spec_keeps_everything():
    full = SubnetSpec.full(BASE)
    assert full == SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37,) * 4, hidden=32, context=512)
    assert full.validate(BASE) is full
    assert full.is_full(BASE)
    assert not good_spec().is_full(BASE)


def test_uniform_repeats_per_layer_counts():
    spec = SubnetSpec.uniform(layers=[1, 3], heads=2, ffn=10, hidden=16, context=64)
    assert spec == SubnetSpec(layers=(1, 3), heads=(2, 2), ffn=(10, 10), hidden=16, context=64)


def test_lists_are_normalised_to_tuples_and_numpy_ints_to_int():
    spec = SubnetSpec(layers=[0, 2], heads=[np.int64(3), 1], ffn=[5, 6], hidden=np.int32(16), context=32)
    assert spec.layers == (0, 2) and isinstance(spec.layers, tuple)
    assert spec.heads == (3, 1) and isinstance(spec.heads, tuple)
    assert all(type(v) is int for v in spec.heads + (spec.hidden,))
    # value semantics: hashable, equal to the tuple-built spec
    same = SubnetSpec(layers=(0, 2), heads=(3, 1), ffn=(5, 6), hidden=16, context=32)
    assert spec == same and hash(spec) == hash(same)
    assert len({spec, same}) == 1


def test_spec_is_frozen():
    spec = good_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hidden = 8  # type: ignore[misc]


def test_describe():
    assert good_spec().describe() == "L3 H1-4 F5-37 D24 C128"
    assert SubnetSpec.full(BASE).describe() == "L4 H4 F37 D32 C512"


# ---- round trips ----------------------------------------------------------------------------


def test_yaml_round_trip():
    spec = good_spec()
    text = spec.to_yaml()
    want = {"layers": [0, 2, 3], "heads": [4, 1, 3], "ffn": [37, 5, 20], "hidden": 24, "context": 128}
    assert yaml.safe_load(text) == want
    assert SubnetSpec.from_yaml(text) == spec


def test_json_round_trip():
    spec = good_spec()
    text = spec.to_json()
    encoder_fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("kv_heads", "attn", "vocab")}  # decoders only
    assert json.loads(text) == encoder_fields | {"layers": [0, 2, 3], "heads": [4, 1, 3], "ffn": [37, 5, 20]}
    assert SubnetSpec.from_json(text) == spec


def test_dict_round_trip_uses_plain_lists():
    spec = good_spec()
    data = spec.to_dict()
    assert data == {"layers": [0, 2, 3], "heads": [4, 1, 3], "ffn": [37, 5, 20], "hidden": 24, "context": 128}
    assert SubnetSpec.from_dict(data) == spec


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    spec = good_spec()
    path = tmp_path / f"spec{suffix}"
    spec.save(path)
    text = path.read_text()
    if suffix == ".json":
        assert json.loads(text)["layers"] == [0, 2, 3]
    else:
        assert yaml.safe_load(text)["layers"] == [0, 2, 3]
    loaded = SubnetSpec.load(path)
    assert loaded == spec
    assert loaded.validate(BASE) == spec


def test_hand_written_yaml_is_accepted():
    text = "layers: [0, 1]\nheads: [2, 4]\nffn:\n  - 10\n  - 37\nhidden: 32\ncontext: 256\n"
    spec = SubnetSpec.from_yaml(text)
    assert spec == SubnetSpec(layers=(0, 1), heads=(2, 4), ffn=(10, 37), hidden=32, context=256)


# ---- validation: each error names the field and the allowed range -----------------------------


@pytest.mark.parametrize(
    "changes, pattern",
    [
        # more heads than the base has
        (dict(heads=(4, 5, 3)), r"SubnetSpec\.heads\[1\]=5 is out of range; allowed 1\.\.4"),
        (dict(heads=(0, 1, 3)), r"SubnetSpec\.heads\[0\]=0 is out of range; allowed 1\.\.4"),
        # FFN wider than the base
        (dict(ffn=(37, 5, 38)), r"SubnetSpec\.ffn\[2\]=38 is out of range; allowed 1\.\.37"),
        (dict(ffn=(37, 0, 5)), r"SubnetSpec\.ffn\[1\]=0 is out of range; allowed 1\.\.37"),
        # hidden
        (dict(hidden=0), r"SubnetSpec\.hidden=0 is out of range; allowed 1\.\.32"),
        (dict(hidden=33), r"SubnetSpec\.hidden=33 is out of range; allowed 1\.\.32"),
        # context longer than the base's positions
        (dict(context=513), r"SubnetSpec\.context=513 is out of range; allowed 1\.\.512"),
        (dict(context=0), r"SubnetSpec\.context=0 is out of range; allowed 1\.\.512"),
        # layers
        (
            dict(layers=(), heads=(), ffn=()),
            r"SubnetSpec\.layers is empty; keep between 1 and 4 layer indices in 0\.\.3",
        ),
        (dict(layers=(0, 2, 4)), r"SubnetSpec\.layers\[2\]=4 is out of range; allowed layer indices are 0\.\.3"),
        (dict(layers=(-1, 2, 3)), r"SubnetSpec\.layers\[0\]=-1 is out of range; allowed layer indices are 0\.\.3"),
        (
            dict(layers=(0, 1, 2, 3, 3), heads=(1,) * 5, ffn=(1,) * 5),
            r"SubnetSpec\.layers has 5 entries; the base has 4 layers \(allowed 1\.\.4\)",
        ),
        (dict(layers=(2, 0, 3)), r"SubnetSpec\.layers=\[2, 0, 3\] must be strictly increasing base layer indices"),
        (dict(layers=(0, 2, 2)), r"SubnetSpec\.layers=\[0, 2, 2\] must be strictly increasing base layer indices"),
        # per-layer lists must match the kept layers
        (dict(heads=(4, 1)), r"SubnetSpec\.heads has 2 entries; it needs one per kept layer \(3\)"),
        (dict(ffn=(4, 1, 2, 3)), r"SubnetSpec\.ffn has 4 entries; it needs one per kept layer \(3\)"),
    ],
)
def test_validate_names_field_and_range(changes, pattern):
    spec = good_spec(**changes)  # constructing is fine: the range depends on the base
    with pytest.raises(SpecError, match=pattern):
        spec.validate(BASE)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
    with pytest.raises(ValueError):
        good_spec(hidden=0).validate(BASE)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(hidden=24.0), r"SubnetSpec\.hidden=24\.0 must be an integer"),
        (dict(context="128"), r"SubnetSpec\.context='128' must be an integer"),
        (dict(hidden=True), r"SubnetSpec\.hidden=True must be an integer"),
        (dict(heads=(4, 1.5, 3)), r"SubnetSpec\.heads\[1\]=1\.5 must be an integer"),
        (dict(ffn=(37, None, 3)), r"SubnetSpec\.ffn\[1\]=None must be an integer"),
        (dict(layers=(0, "2", 3)), r"SubnetSpec\.layers\[1\]='2' must be an integer"),
        (dict(heads=4), r"SubnetSpec\.heads=4 must be a list of integers"),
        (dict(layers="023"), r"SubnetSpec\.layers='023' must be a list of integers"),
    ],
)
def test_non_integer_values_are_rejected_at_construction(changes, pattern):
    with pytest.raises(SpecError, match=pattern):
        good_spec(**changes)


def test_yaml_unknown_key():
    text = good_spec().to_yaml() + "dropout: 0.1\n"
    expected = r".*expected exactly \['context', 'ffn', 'heads', 'hidden', 'layers'\]"
    with pytest.raises(SpecError, match=re.escape("unknown ['dropout'] / missing []") + expected):
        SubnetSpec.from_yaml(text)


def test_yaml_missing_key():
    data = good_spec().to_dict()
    del data["context"]
    with pytest.raises(SpecError, match=re.escape("unknown [] / missing ['context']") + r".*expected exactly"):
        SubnetSpec.from_yaml(yaml.safe_dump(data))


def test_yaml_misspelled_key_reports_both():
    data = good_spec().to_dict()
    data["hiden"] = data.pop("hidden")
    with pytest.raises(SpecError, match=re.escape("unknown ['hiden'] / missing ['hidden']")):
        SubnetSpec.from_yaml(yaml.safe_dump(data))


def test_yaml_non_integer_value():
    data = good_spec().to_dict()
    data["heads"] = [4, "two", 3]
    with pytest.raises(SpecError, match=r"SubnetSpec\.heads\[1\]='two' must be an integer"):
        SubnetSpec.from_yaml(yaml.safe_dump(data))


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", ""])
def test_yaml_must_be_a_mapping(text):
    with pytest.raises(SpecError, match=r"SubnetSpec YAML must be a mapping, got (list|str|NoneType)"):
        SubnetSpec.from_yaml(text)


def test_json_unknown_key():
    data = good_spec().to_dict() | {"extra": 1}
    with pytest.raises(SpecError, match=re.escape("unknown ['extra'] / missing []")):
        SubnetSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["[1, 2]", "\"spec\"", "null"])
def test_json_must_be_an_object(text):
    # Same boundary contract as from_yaml: a document that is not a mapping is a SpecError.
    with pytest.raises(SpecError, match=r"must be a mapping"):
        SubnetSpec.from_json(text)


def test_load_validates_nothing_until_asked(tmp_path):
    # Loading is pure parsing; range checks need the base shape.
    path = tmp_path / "too_big.yaml"
    good_spec(hidden=4096).save(path)
    spec = SubnetSpec.load(path)
    assert spec.hidden == 4096
    with pytest.raises(SpecError, match=r"SubnetSpec\.hidden=4096 is out of range; allowed 1\.\.32"):
        spec.validate(BASE)
