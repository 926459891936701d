import pytest

from sirl.config import ConfigError, ExperimentConfig, check_ranges, load_config, parse_overrides, to_yaml
from sirl.paths import resolve_path
from sirl.cli import main


def test_defaults_then_preset_then_overrides():
    default = load_config()
    assert isinstance(default, ExperimentConfig) and default.model.size == "tiny"
    preset = load_config("arith_sft")
    assert preset.model.path is None  # arith_sft overrides its base (arith), which sets a checkpoint path
    assert preset.task.args["min_ops"] == 8  # inherited from the base preset
    assert preset.sft.task_args["min_ops"] == 1
    overridden = load_config("arith_sft", ["model.hidden_size=128", "sft.lr=1e-3", "eval.pass_k=[1, 2]"])
    assert overridden.model.hidden_size == 128
    assert overridden.sft.lr == pytest.approx(1e-3)
    assert overridden.eval.pass_k == [1, 2]


def test_ints_are_accepted_where_floats_are_expected():
    assert load_config(None, ["sft.lr=1"]).sft.lr == 1.0
    assert isinstance(load_config(None, ["sft.lr=1"]).sft.lr, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hiden_size=3", r"unknown config key model.hiden_size; valid keys of model: \['arch',"),
        ("modle.size=tiny", r"unknown config key 'modle'|unknown config key modle"),
        ("model.size=huge", r"model.size='huge' is not a valid choice; valid choices: \['nano', 'tiny', 'small', 'base'\]"),
        ("sft.steps=many", r"sft.steps='many' has the wrong type: expected int, got str"),
        ("sft.steps=1.5", r"expected int, got float"),
        ("sft.target_accuracy=yes", r"sft.target_accuracy=True has the wrong type"),
        ("eval.pass_k=[1, x]", r"eval.pass_k\[1\]='x'"),
    ],
)
def test_bad_overrides_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like"):
        parse_overrides(["model.size"])


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"available presets: \[.*'arith'"):
        load_config("no_such_preset")


def test_preset_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text(f"base: {cycle}\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_config(str(cycle))


def test_task_knobs_are_checked_against_the_task_signature(capsys):
    assert main(["config", "--task.args.max_opz=3"]) == 2
    assert "unknown key task.args.max_opz for task 'arith'; valid keys: ['max_ops', 'min_ops', 'modulus', 'op_weights', 'test_fraction']" in capsys.readouterr().err
    assert main(["config", "--task.args.max_ops=lots"]) == 2
    assert "task.args.max_ops='lots' has the wrong type: expected int" in capsys.readouterr().err


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config("arith_sft", ["seed=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_config(str(path)) == config


def test_a_field_added_after_a_save_is_no_difference_at_its_default():
    import yaml

    from sirl.config import config_differences

    saved = yaml.safe_load(to_yaml(load_config("arith")))
    del saved["method"]["failure_choice"]  # a config saved before the field existed
    assert config_differences(saved, load_config("arith")) == []
    assert config_differences(saved, load_config("arith", ["method.failure_choice=random"])) == [
        "method.failure_choice: None -> 'random'"
    ]
    # a changed value of a field both have is still a difference
    assert config_differences(saved, load_config("arith", ["method.probes=3"])) == ["method.probes: 1 -> 3"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.probes=0", "method.probes=0 is out of range: it must be at least 1"),
        ("method.drop=1.0", "method.drop=1.0 is out of range: it must be in [0, 1)"),
        ("method.repair_share=1.5", "method.repair_share=1.5 is out of range: it must be in [0, 1]"),
        ("train.lr=0", "train.lr=0.0 is out of range: it must be in (0, 1]"),
        # a learning rate that overflows the weights in one step is refused before anything runs
        ("train.lr=1e10", "train.lr=10000000000.0 is out of range: it must be in (0, 1]"),
        ("rollout.group_size=0", "rollout.group_size=0 is out of range: it must be at least 1"),
        # AuditSchedule needs a positive floor: refused here, not when the run reaches it
        ("internalize.audit_min=0", "internalize.audit_min=0.0 is out of range: it must be in (0, 1]"),
        ("train.grad_clip=0", "train.grad_clip=0.0 is out of range: it must be greater than 0"),
    ],
)
def test_values_out_of_range_are_refused_by_name(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("arith", [override])
    assert str(error.value) == message


def test_every_shipped_preset_is_in_range_and_the_audit_bounds_are_ordered():
    for preset in sorted(resolve_path("configs").glob("*.yaml")):
        check_ranges(load_config(str(preset)))  # raises on a value out of range
    with pytest.raises(ConfigError, match="method.settle_probes=3 needs method.drop > 0"):
        load_config(None, ["method.settle_probes=3", "method.drop=0"])
    with pytest.raises(ConfigError, match="audit_min=0.5 is above internalize.audit_max=0.2"):
        load_config(None, ["internalize.audit_min=0.5", "internalize.audit_max=0.2"])
    # the edges of each range are accepted
    load_config(None, ["method.drop=0", "method.repair_share=1", "method.settle_probes=0", "train.eval_every=0", "train.lr=1"])


def test_every_numeric_field_declares_its_range_beside_it():
    """Ranges sit in the field declarations (config.ranged), so none can be forgotten in a distant table:
    every int or float field (optional or not) of every section has one, but seeds (seed, few_shot_seed), which any int can be."""
    import dataclasses
    import types
    import typing

    from sirl.config import ExperimentConfig

    missing = []
    for section_name, section in typing.get_type_hints(ExperimentConfig).items():
        if not dataclasses.is_dataclass(section):
            continue
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            tp = hints[f.name]
            options = set(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else {tp}
            if options & {int, float} and "range" not in f.metadata and not f.name.endswith("seed"):
                missing.append(f"{section_name}.{f.name}")
    assert missing == []
