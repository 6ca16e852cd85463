"""The generic Registry and the config dataclasses (round trips, fractions, strict keys, overrides, YAML)."""

from __future__ import annotations

import dataclasses

import pytest

from robust_student import config as config_module
from robust_student.config import (ConfigBase, DataConfig, DistillConfig, EvalConfig, ThreatConfig, TrainConfig,
                                   format_eps, parse_number)
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


def test_names_are_shown_as_written(registry):
    assert registry.names() == ["fashion-mnist[:DIR]", "imagefolder:PATH", "resnet18", "resnet50"]
    assert list(registry) == ["fashion-mnist", "imagefolder", "resnet18", "resnet50"]


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
        teachers={"adv": "open_clip:hf-hub:chs20/fare2-clip"}, method_args={"beta": 2.0, "gamma": [1, 2]},
        threat=ThreatConfig(norm="l2", eps=0.5, step_size=0.1, steps=7, random_start="uniform"),
        train=TrainConfig(epochs=3, batch_size=16, mixed_precision="bf16", grad_clip=1.0),
        eval=EvalConfig(attacks=["clean", "pgd20"], n_examples=10),
    )
    data = original.to_dict()
    assert isinstance(data["threat"], dict) and data["dataset"]["name"] == "imagefolder:/data/CRC100K"
    assert DistillConfig.from_dict(data) == original


def test_fractions_parse_to_pixel_units():
    assert ThreatConfig(eps="8/255").eps == 8 / 255
    assert ThreatConfig.from_dict({"eps": "8 / 255", "step_size": "2/255"}).step_size == 2 / 255
    assert EvalConfig.from_dict({"eps": "4/255"}).eps == 4 / 255
    assert parse_number(0.5) == 0.5 and parse_number("0.25") == 0.25
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5"
    for bad in ("eight", "8/0", True, None):
        with pytest.raises(ValueError, match="8/255"):
            parse_number(bad)


def test_unknown_keys_raise_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['epsilon'\] for ThreatConfig") as info:
        ThreatConfig.from_dict({"epsilon": 0.1})
    assert "Valid keys:" in str(info.value) and "eps" in str(info.value)
    with pytest.raises(ValueError, match=r"\['epoch'\] for TrainConfig.*epochs"):
        DistillConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"\['sise'\] for DataConfig.*image_size"):
        DistillConfig.from_dict({"dataset": {"name": "synthetic", "sise": 8}})
    with pytest.raises(ValueError, match="Unknown key"):
        DistillConfig.from_dict({"teacherz": "conch"})


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


@pytest.mark.parametrize("build, match", [
    (lambda: ThreatConfig(norm="l3"), "norm must be one of"),
    (lambda: EvalConfig(norm="l3"), "norm must be one of"),
    (lambda: TrainConfig(mixed_precision="fp8"), "mixed_precision"),
    (lambda: TrainConfig(epochs=0), "epochs"),
    (lambda: ThreatConfig(eps=-0.1), ">= 0"),
    (lambda: ThreatConfig(random_start="gaussian"), "random_start"),
    (lambda: ThreatConfig(steps=-1), "steps"),
    (lambda: DistillConfig.from_dict({"threat": {"norm": "l3"}}), "norm must be one of"),
])
def test_bad_values_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
