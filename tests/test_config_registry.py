"""The generic Registry and the config dataclasses (round trips, fractions, strict keys, overrides, YAML)."""

from __future__ import annotations

import dataclasses

import pytest

from robust_student import config as config_module
from robust_student.config import (AttackConfig, ConfigBase, ConfigError, DataConfig, DistillConfig, EvalConfig,
                                   TeacherSpec, ThreatConfig, TrainConfig, parse_number)
from robust_student.formatting import format_eps, format_percent
from robust_student.registry import Registry


@pytest.fixture
def registry() -> Registry:
    reg: Registry = Registry("widget")
    reg.register("resnet18")("R18")
    reg.register("resnet50")("R50")
    reg.register("imagefolder", takes_arg=True, usage="imagefolder:PATH")("IF")
    reg.register("fashion-mnist", takes_arg="optional", usage="fashion-mnist[:DIR]")("FM")
    return reg


# -- Registry ---------------------------------------------------------------------------------------------


def test_exact_names_resolve_without_argument(registry):
    assert registry.resolve("resnet18") == ("R18", None)
    assert registry.get("resnet50") == "R50"
    assert "resnet18" in registry and "resnet18:x" not in registry
    with pytest.raises(ValueError, match="Unknown widget 'resnet18:x'"):
        registry.resolve("resnet18:x")


def test_prefix_names_take_everything_after_the_first_colon(registry):
    assert registry.resolve("imagefolder:/data/CRC100K") == ("IF", "/data/CRC100K")
    assert registry.resolve("imagefolder:C:/x:y") == ("IF", "C:/x:y")
    with pytest.raises(ValueError, match="needs an argument: write imagefolder:PATH"):
        registry.resolve("imagefolder")
    with pytest.raises(ValueError, match="needs an argument after ':'"):
        registry.resolve("imagefolder:")
    with pytest.raises(ValueError, match="takes no argument"):
        registry.get("imagefolder:/data")


def test_optional_argument_names_accept_both_forms(registry):
    assert registry.resolve("fashion-mnist") == ("FM", None)
    assert registry.resolve("fashion-mnist:/opt/fm") == ("FM", "/opt/fm")


def test_names_are_plain_and_usage_says_how_to_write_them(registry):
    assert registry.names() == ["fashion-mnist", "imagefolder", "resnet18", "resnet50"]
    assert list(registry) == registry.names()
    assert registry.usage("imagefolder") == "imagefolder:PATH" and registry.usage("fashion-mnist:/x") == \
        "fashion-mnist[:DIR]"
    assert registry.describe("resnet18") == {"name": "resnet18", "usage": "resnet18", "summary": "", "metadata": None}


def test_entries_carry_their_metadata():
    reg: Registry = Registry("widget")
    reg.register("a", metadata={"license": "MIT"})("A")
    reg.register("b", takes_arg=True)("B")
    assert reg.metadata("a") == {"license": "MIT"} and reg.metadata("b:x") is None and reg.metadata("b") is None
    assert reg.entry_name("b:/some/path") == "b"


def test_unknown_name_lists_valid_names_and_suggests_a_close_one(registry):
    with pytest.raises(ValueError) as info:
        registry.resolve("resnet19")
    message = str(info.value)
    assert "Unknown widget 'resnet19'" in message
    assert "Valid widget names: fashion-mnist[:DIR], imagefolder:PATH, resnet18, resnet50." in message
    assert "Did you mean 'resnet18'?" in message
    with pytest.raises(ValueError, match="Valid widget names") as far:
        registry.resolve("transformer")
    assert "Did you mean" not in str(far.value)
    for bad in ("", None):
        with pytest.raises(ValueError, match="non-empty string"):
            registry.resolve(bad)


def test_duplicate_registration_is_rejected(registry):
    with pytest.raises(ValueError, match="already registered"):
        registry.register("resnet18")("other")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("imagefolder")("other")
    assert registry.get("resnet18") == "R18"


# -- configs ----------------------------------------------------------------------------------------------

CONFIG_CLASSES = sorted(
    (obj for obj in vars(config_module).values()
     if isinstance(obj, type) and issubclass(obj, ConfigBase) and obj is not ConfigBase),
    key=lambda cls: cls.__name__,
)


def test_every_config_class_is_found():
    assert {cls.__name__ for cls in CONFIG_CLASSES} >= {
        "ThreatConfig", "DataConfig", "TrainConfig", "EvalConfig", "DistillConfig"}


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_default_config_round_trips_through_dict(cls):
    original = cls()
    data = original.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(cls)}
    assert cls.from_dict(data) == original
    assert cls.from_dict(data).to_dict() == data


def test_customised_distill_config_round_trips():
    original = DistillConfig(
        teacher="conch", student="resnet18", method="dghfa",
        dataset=DataConfig(name="imagefolder:/data/CRC100K", image_size=224, skip_corrupt=True),
        method_args={"beta": 2.0, "gamma": [1, 2]},
        teachers={"adv": "open_clip:hf-hub:chs20/fare2-clip",
                  "nat": TeacherSpec("fmnist-clip", trainable="head", lr=1e-4)},
        threat=ThreatConfig(norm="l2", eps=0.5),
        attack=AttackConfig(step_size=0.1, steps=7, random_start="uniform", student_mode="train"),
        train=TrainConfig(epochs=3, batch_size=16, mixed_precision="bf16", grad_clip=1.0),
        eval=EvalConfig(attacks=["clean", "pgd20"], n_examples=10),
    )
    data = original.to_dict()
    assert isinstance(data["threat"], dict) and data["dataset"]["name"] == "imagefolder:/data/CRC100K"
    assert data["teachers"]["adv"] == {"name": "open_clip:hf-hub:chs20/fare2-clip", "args": {}, "trainable": None,
                                       "lr": None}
    assert DistillConfig.from_dict(data) == original
    assert original.teachers["adv"] == TeacherSpec(name="open_clip:hf-hub:chs20/fare2-clip")


def test_fractions_parse_to_pixel_units():
    assert ThreatConfig(eps="8/255").eps == 8 / 255
    assert AttackConfig.from_dict({"step_size": "2 / 255"}).step_size == 2 / 255
    assert EvalConfig.from_dict({"eps": "4/255"}).eps == 4 / 255
    assert parse_number(0.5) == 0.5 and parse_number("0.25") == 0.25 and parse_number("1e-3") == 0.001
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5" and format_eps(0) == "0"
    assert format_eps(0.5, "l2") == "0.5" and format_eps(2 / 255, "l2") == f"{2 / 255:g}"
    assert format_percent(0.6) == "60.00 %" and format_percent(0.123, 1) == "12.3 %" and format_percent(None) == "-"
    for bad in ("eight", "8/0", True, None):
        with pytest.raises(ValueError, match="8/255"):
            parse_number(bad)


def test_unknown_keys_raise_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"^epsilon is not a ThreatConfig key\. Did you mean 'eps'\?") as info:
        ThreatConfig.from_dict({"epsilon": 0.1})
    assert "Valid keys: norm, eps" in str(info.value)
    with pytest.raises(ValueError, match=r"^train\.epoch is not a TrainConfig key\. Did you mean 'epochs'"):
        DistillConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"^dataset\.sise is not a DataConfig key.*image_size"):
        DistillConfig.from_dict({"dataset": {"name": "synthetic", "sise": 8}})
    with pytest.raises(ValueError, match="teacherz is not a DistillConfig key"):
        DistillConfig.from_dict({"teacherz": "conch"})


def test_attack_loop_keys_under_threat_say_where_they_moved():
    with pytest.raises(ConfigError, match=r"^threat\.steps is not a ThreatConfig setting any more: write attack"):
        DistillConfig.from_dict({"threat": {"eps": 0.1, "steps": 3}})


@pytest.mark.parametrize("override, message", [
    ("train.epochs=1.5", "train.epochs must be an integer, got 1.5 (float)"),
    ("train.epochs=abc", "train.epochs must be an integer, got 'abc' (str)"),
    ("train.lr=fast", "train.lr must be a number, got 'fast' (str)"),
    ("attack.steps=2.7", "attack.steps must be an integer, got 2.7 (float)"),
    ("train.batch_size=true", "train.batch_size must be an integer, got True (bool)"),
    ("train.overwrite=maybe", "train.overwrite must be true or false, got 'maybe' (str)"),
    ("dataset.image_size=-3", "dataset.image_size must be >= 1, got -3"),
    ("dataset.max_train_examples=0", "dataset.max_train_examples must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.lr=nan", "train.lr must be a number"),
    ("eval.attacks=7", "eval.attacks must be a list of strings, got 7 (int)"),
    ("teachers={adv: {name: x, trainable: sometimes}}", "teachers.adv.trainable must be one of None, 'none', 'head'"),
    ("threat.eps=2", "threat.eps must be <= 1 for L-inf on [0, 1] pixels, got 2 (did you mean 2/255?)"),
    ("threat.eps=-0.1", "threat.eps must be >= 0, got -0.1"),
    ("eval.eps=0", "eval.eps is 0, which turns every attack into clean accuracy"),
    ("train.lr=[", "train.lr = '[' is not a value: line 1, column 2: YAML syntax error"),
])
def test_every_field_is_type_checked_at_construction_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        DistillConfig().with_overrides(override)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_unambiguous_values_are_coerced():
    config = DistillConfig().with_overrides({"train.epochs": 2.0, "train.lr": "1e-3", "train.batch_size": "32",
                                             "train.overwrite": "true", "eval.attacks": "pgd20"})
    assert config.train.epochs == 2 and isinstance(config.train.epochs, int) and config.train.lr == 0.001
    assert config.train.batch_size == 32 and config.train.overwrite is True and config.eval.attacks == ["pgd20"]
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


def test_a_large_linf_radius_warns(caplog):
    with caplog.at_level("WARNING"):
        ThreatConfig(eps=0.7)
    assert "above 0.5" in caplog.text


def test_dataset_may_be_written_as_a_name():
    config = DistillConfig.from_dict({"dataset": "synthetic:3"})
    assert config.dataset == DataConfig(name="synthetic:3")
    assert DistillConfig(dataset="csv:/x.csv").dataset.name == "csv:/x.csv"


def test_with_overrides_applies_dotted_keys_and_leaves_the_original_alone():
    base = DistillConfig(dataset=DataConfig(name="fashion-mnist", image_size=32))
    config = base.with_overrides("train.epochs=3", "threat.eps=4/255", "dataset=synthetic:3")
    assert config.train.epochs == 3 and config.threat.eps == 4 / 255
    assert config.dataset == DataConfig(name="synthetic:3", image_size=32)  # other dataset keys kept
    assert base.train.epochs == TrainConfig().epochs and base.dataset.name == "fashion-mnist"
    listed = base.with_overrides(["train.mixed_precision=bf16", "eval.attacks=[clean, fgsm]"], {"train.lr": 0.01})
    assert listed.train.mixed_precision == "bf16" and listed.eval.attacks == ["clean", "fgsm"]
    assert listed.train.lr == 0.01
    with pytest.raises(ValueError, match="epoch"):
        base.with_overrides("train.epoch=3")
    with pytest.raises(ValueError, match="not a config section"):
        base.with_overrides("teacher.name=x")
    with pytest.raises(ValueError, match="section.key=value"):
        base.with_overrides("train.epochs")


def test_yaml_round_trip(tmp_path):
    original = DistillConfig(method="trades", threat=ThreatConfig(eps="8/255"), train=TrainConfig(epochs=2),
                             dataset=DataConfig(name="synthetic:3", max_train_examples=10))
    path = tmp_path / "run.yaml"
    original.to_yaml(path)
    assert DistillConfig.from_yaml(path) == original
    path.write_text("threat:\n  eps: 8/255\n  norm: L2\ntrain:\n  epochs: 4\n")
    loaded = DistillConfig.from_yaml(path)
    assert loaded.threat.eps == 8 / 255 and loaded.threat.norm == "l2" and loaded.train.epochs == 4
    path.write_text("train:\n  epochz: 4\n")
    with pytest.raises(ValueError, match="run.yaml.*epochz"):
        DistillConfig.from_yaml(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        DistillConfig.from_yaml(path)


def test_yaml_syntax_errors_give_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: 3\n   lr: 0.1\n")
    with pytest.raises(ValueError) as info:
        DistillConfig.from_yaml(path)
    text = str(info.value)
    assert text.startswith(f"{path}: line 3, column 6: YAML syntax error: ") and "\n" not in text


@pytest.mark.parametrize("build, match", [
    (lambda: ThreatConfig(norm="l3"), "norm must be one of"),
    (lambda: EvalConfig(norm="l3"), "norm must be one of"),
    (lambda: TrainConfig(mixed_precision="fp8"), "mixed_precision"),
    (lambda: TrainConfig(epochs=0), "epochs"),
    (lambda: ThreatConfig(eps=-0.1), ">= 0"),
    (lambda: AttackConfig(random_start="gaussian"), "random_start"),
    (lambda: AttackConfig(steps=-1), "steps"),
    (lambda: AttackConfig(student_mode="sleep"), "student_mode"),
    (lambda: EvalConfig(batch_size=0), "batch_size"),
    (lambda: EvalConfig(attacks=[]), "attacks"),
    (lambda: DistillConfig.from_dict({"threat": {"norm": "l3"}}), "threat.norm must be one of"),
])
def test_bad_values_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
