import dataclasses

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
    del saved["method"]["si"]["failure_choice"]  # a config saved before the field existed
    assert config_differences(saved, load_config("arith")) == []
    assert config_differences(saved, load_config("arith", ["method.si.failure_choice=random"])) == [
        "method.si.failure_choice: None -> 'random'"
    ]
    # a changed value of a field both have is still a difference
    assert config_differences(saved, load_config("arith", ["method.si.probes=3"])) == ["method.si.probes: 1 -> 3"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.si.probes=0", "method.si.probes=0 is out of range: it must be at least 1"),
        ("method.si.drop=1.0", "method.si.drop=1.0 is out of range: it must be in [0, 1)"),
        ("method.tree_branch.repair_share=1.5", "method.tree_branch.repair_share=1.5 is out of range: it must be in [0, 1]"),
        ("method.prime.beta=0", "method.prime.beta=0.0 is out of range: it must be greater than 0"),
        # a knob at its old place is checked at its new ones (the first section that has it is named)
        ("method.probes=0", "method.si.probes=0 is out of range: it must be at least 1"),
        ("train.lr=0", "train.lr=0.0 is out of range: it must be in (0, 1]"),
        # a learning rate that overflows the weights in one step is refused before anything runs
        ("train.lr=1e10", "train.lr=10000000000.0 is out of range: it must be in (0, 1]"),
        ("rollout.group_size=0", "rollout.group_size=0 is out of range: it must be at least 1"),
        # AuditSchedule needs a positive floor: refused here, not when the run reaches it
        ("method.si_internal.audit_min=0", "method.si_internal.audit_min=0.0 is out of range: it must be in (0, 1]"),
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
    with pytest.raises(ConfigError, match="method.si.settle_probes=3 needs method.si.drop > 0"):
        load_config(None, ["method.si.settle_probes=3", "method.si.drop=0"])
    with pytest.raises(ConfigError, match="method.si_internal.audit_min=0.5 is above method.si_internal.audit_max=0.2"):
        load_config(None, ["method.si_internal.audit_min=0.5", "method.si_internal.audit_max=0.2"])
    with pytest.raises(ConfigError, match="method.prime.accuracy_low=0.9 is above method.prime.accuracy_high=0.8"):
        load_config(None, ["method.prime.accuracy_low=0.9"])
    # the edges of each range are accepted
    load_config(None, ["method.si.drop=0", "method.si.repair_share=1", "method.si.settle_probes=0", "train.eval_every=0", "train.lr=1"])


def test_every_numeric_field_declares_its_range_beside_it():
    """Ranges sit in the field declarations (config.ranged), so none can be forgotten in a distant table:
    every int or float field (optional or not) of every section has one, but seeds (seed, few_shot_seed), which any int can be."""
    import dataclasses
    import types
    import typing

    from sirl.config import ExperimentConfig

    sections = {name: tp for name, tp in typing.get_type_hints(ExperimentConfig).items() if dataclasses.is_dataclass(tp)}
    method_sections = sections.pop("method")  # each method's settings (sirl.methods.settings), a section each
    sections.update({f"method.{name}": tp for name, tp in typing.get_type_hints(method_sections).items()})
    assert "method.si" in sections and "method.prime" in sections
    missing = []
    for section_name, section in sections.items():
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            tp = hints[f.name]
            options = set(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else {tp}
            if options & {int, float} and "range" not in f.metadata and not f.name.endswith("seed"):
                missing.append(f"{section_name}.{f.name}")
    assert missing == []


# --- each method's settings, and the places an older sirl had them -------------------------------------


def test_each_method_with_settings_has_its_section_and_the_registry_names_them():
    from sirl.methods import METHODS
    from sirl.methods.settings import SETTINGS

    config = load_config(None, ["method.si.probes=2", "method.tree.values=leave_one_out", "method.prime.beta=0.1"])
    assert (config.method.si.probes, config.method.tree.values, config.method.prime.beta) == (2, "leave_one_out", 0.1)
    assert config.method.si_internal.probes == config.method.vine.probes == 1  # one method's knob is its own
    assert [f.name for f in dataclasses.fields(config.method)] == list(SETTINGS) and set(SETTINGS) <= set(METHODS)
    assert config.method.of("tree") is config.method.tree and config.method.of("grpo") is None
    with pytest.raises(ConfigError, match=r"unknown config key method.tree.probes; valid keys of method.tree: \['outcome_mix', 'values', 'weighting'\]"):
        load_config(None, ["method.tree.probes=2"])
    with pytest.raises(ConfigError, match=r"unknown config key method.sii; valid keys of method: \['prime', 'random_reset', 'si', "):
        load_config(None, ["method.sii.probes=2"])
    with pytest.raises(ConfigError, match=r"the overrides: unknown config key method.probez; the method section holds a section per method "
                       r"\(method.prime, .*, e.g. method.si.probes\), and reads these knobs of before at their new places: \['blind_resets', "):
        load_config(None, ["method.probez=2"])


def test_a_knob_at_its_old_place_is_read_at_every_new_one():
    config = load_config(None, [
        "method.probes=2", "method.tree_values=leave_one_out", "method.normalization=diluting", "method.localizer=divergence",
        "internalize.verify_coef=0.5", "prime.beta=0.1",
    ])
    m = config.method
    assert (m.si.probes, m.si_internal.probes, m.random_reset.probes, m.vine.probes) == (2, 2, 2, 2)
    assert (m.tree.values, m.tree_branch.values, config.algo.normalization) == ("leave_one_out", "leave_one_out", "diluting")
    assert (m.si.localizer, m.si_internal.verify_coef, m.prime.beta) == ("divergence", 0.5, 0.1)
    # in one layer, the new place wins over the old; a later layer wins whatever the place
    assert load_config(None, ["method.probes=2", "method.si.probes=3"]).method.si.probes == 3
    assert load_config(None, ["method.probes=2", "method.si.probes=3"]).method.vine.probes == 2


def test_a_later_layer_at_the_old_place_overrides_a_preset_at_the_new_one(tmp_path):
    preset = tmp_path / "new.yaml"
    preset.write_text("base: arith\nmethod: {si: {probes: 3, drop: 0.25}}\n")
    old_base = tmp_path / "old_base.yaml"
    old_base.write_text("base: arith\nmethod: {probes: 4, drop: 0.0}\ninternalize: {verify_batch: 8}\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {old_base}\nmethod: {{si: {{probes: 5}}}}\n")
    assert load_config(str(preset), ["method.probes=2"]).method.si.probes == 2
    assert load_config(str(preset), ["method.probes=2"]).method.si.drop == 0.25
    config = load_config(str(child))
    assert (config.method.si.probes, config.method.vine.probes, config.method.si.drop) == (5, 4, 0.0)
    assert config.method.si_internal.verify_batch == 8


def test_every_method_knob_was_somewhere_before_and_every_old_place_leads_to_a_field():
    """MOVED_KNOBS is the one method section of before (23 knobs), MOVED_SECTIONS the internalize and prime
    sections: every place they name is a field now, and every field of a method section is named by one,
    so a config saved before the sections sets every method knob."""
    from sirl.config import to_dict
    from sirl.methods.settings import MOVED_KNOBS, MOVED_SECTIONS, SiInternalSettings, PrimeSettings

    def flat(data, prefix=""):
        return {k: v for name, value in data.items()
                for k, v in (flat(value, f"{prefix}{name}.").items() if isinstance(value, dict) and name != "args" else [(prefix + name, value)])}

    now = flat(to_dict(ExperimentConfig()))
    assert len(MOVED_KNOBS) == 23
    places = {place for targets in MOVED_KNOBS.values() for place in targets}
    places |= {f"{new}.{f.name}" for old, new in MOVED_SECTIONS.items()
               for f in dataclasses.fields({"internalize": SiInternalSettings, "prime": PrimeSettings}[old])}
    assert places - set(now) == set()
    assert {key for key in now if key.startswith("method.")} - places == set()


OLD_SAVES = [
    "checkpoints/arith-tiny/config.yaml", "checkpoints/arith7-tiny/config.yaml", "checkpoints/arith97-tiny/config.yaml",
    "checkpoints/countdown-tiny/config.yaml", "benchmarks/results/internalize_hard/si_internal-seed0/config.yaml",
    "benchmarks/results/smollm2/grpo-arith23/config.yaml",
]


@pytest.mark.parametrize("saved", OLD_SAVES)
def test_a_run_folder_saved_before_the_sections_loads_with_each_value_at_its_new_places(saved):
    """Every old value is found at each of its new places, the loaded config round-trips through YAML, and
    the resume check (config_differences) finds the old file and the loaded config the same."""
    import yaml

    from sirl.config import config_differences
    from sirl.methods.settings import MOVED_KNOBS, MOVED_SECTIONS

    raw = yaml.safe_load(resolve_path(saved).read_text())
    assert "si" not in raw.get("method", {})  # written before the sections
    config = load_config(str(resolve_path(saved)))

    def at(place):
        node = config
        for part in place.split("."):
            node = getattr(node, part)
        return node

    for knob, value in raw.get("method", {}).items():
        assert all(at(place) == value for place in MOVED_KNOBS[knob]), knob
    for old, new in MOVED_SECTIONS.items():
        for knob, value in raw.get(old, {}).items():
            assert at(f"{new}.{knob}") == value, (old, knob)
    assert config_differences(raw, config) == []
    changed = config_differences(raw, load_config(str(resolve_path(saved)), ["method.si.probes=3"]))
    assert [difference.split(":")[0] for difference in changed] == ["method.si.probes"]  # and a change is still one


def test_the_comparison_plans_overrides_read_as_before():
    """The overrides of the benchmarks' comparison plans (method.X, applied to every method of a plan; a
    variant's on top) load, each old knob at every one of its new places and each sectioned one
    (method.si_internal.X) at its own."""
    import yaml

    from sirl.methods.settings import MOVED_KNOBS

    checked = 0
    for plan in sorted(resolve_path("benchmarks").glob("compare_*.yaml")):
        data = yaml.safe_load(plan.read_text())
        for task in data.get("tasks", {}).values():
            layers = [dict(task.get("overrides") or {})]
            layers += [{**layers[0], **v.get("overrides", {})} for v in (data.get("variants") or {}).values()]
            for overrides in layers:
                config = load_config("arith", [f"{key}={value}" for key, value in overrides.items()])
                for key, value in overrides.items():
                    section, _, knob = key.partition(".")
                    # an old flat knob (method.probes) at each of its places now; a sectioned one at its own
                    places = (MOVED_KNOBS[knob] if "." not in knob else (key,)) if section == "method" else ()
                    for place in places:
                        node = config
                        for part in place.split("."):
                            node = getattr(node, part)
                        assert node == value, (plan.name, key, place)
                        checked += 1
    assert checked > 20
