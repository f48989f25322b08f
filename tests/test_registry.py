"""The method registry walks itself: every method declares what the config, the CLI and the
presets derive from it, and the derived pieces agree with the declarations."""

from __future__ import annotations

import pytest

from adautomix_fast import registry
from adautomix_fast.config import Config, resolve
from adautomix_fast.errors import UsageError
from adautomix_fast.methods.options import FAMILIES
from adautomix_fast.models import FAMILIES as ARCH_FAMILIES, build_classifier, library_model
from adautomix_fast.models.specs import ARCH_SPECS
from adautomix_fast.train import get_args_parser


def test_every_declaration_is_complete():
    assert registry.registry_problems() == []


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_every_method_has_published_defaults_for_every_family(method):
    cls = registry.METHODS[method]
    assert set(cls.defaults) == set(FAMILIES)
    keys = {f.name for f in Config.__dataclass_fields__.values()}
    for family in FAMILIES:
        values = cls.published_defaults(family, "r18")
        assert set(values) <= keys, f"{method} {family}: unknown config keys {set(values) - keys}"
        if cls.uses_mix_alpha:
            assert values["mix_alpha"] > 0


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_every_option_is_a_config_field_a_flag_and_part_of_the_identity(method):
    parser = get_args_parser()
    flags = {s for action in parser._actions for s in action.option_strings}
    fields = Config.__dataclass_fields__
    for option in registry.METHODS[method].all_options():
        assert option.name in fields and fields[option.name].default == option.default
        assert option.flag in flags, option.flag
        assert (option.name in Config.IDENTITY) == option.identity
        assert option.help


def test_an_option_out_of_range_is_one_line_naming_the_flag():
    option = next(o for o in registry.OPTIONS.values() if o.type is float and o.low is not None)
    with pytest.raises(UsageError, match=option.flag):
        resolve({"method": option.owner, option.name: option.low - 1.0})


def test_another_methods_flag_is_refused_but_a_presets_value_is_left_out():
    with pytest.raises(UsageError, match="--gen-train-prob applies to adautomix, automix and samix; "
                                         "--method mixup does not use it"):
        registry.check_foreign_options("mixup", {"gen_train_prob": 0.5})
    # typed at its default: refused too
    with pytest.raises(UsageError, match="applies to adautomix, automix and samix"):
        registry.check_foreign_options("mixup", {"gen_train_prob": 1.0})
    cfg = resolve({"method": "mixup"}, "cifar100-swin_t")                # the family trains G on 80% of steps
    assert resolve({}, "cifar100-swin_t").gen_train_prob == 0.8 and cfg.gen_train_prob == 1.0
    assert resolve({"method": "mixup"}, "cub-r18").random_mix_samples is False   # the preset's AdAutoMix value


def test_comparison_presets_exist_for_every_baseline():
    for method in registry.BASELINES:
        assert resolve({}, f"cifar100-r18-{method}").method == method


def test_every_architecture_declares_its_tap_stem_rule_and_size():
    for arch, spec in ARCH_SPECS.items():
        assert spec.tap_channels > 0 and spec.tap_size > 0 and spec.size_multiple > 0, arch
        assert not spec.cifar_stem or spec.cifar_tap_size, arch


def test_every_architecture_family_is_in_the_table_with_its_cam_layer_and_library_model():
    # "library": timm/<name>, tv/<name> and modules (tests/test_library_archs.py), no ARCH_SPECS entry
    assert {spec.family for spec in ARCH_SPECS.values()} | {"library"} == set(ARCH_FAMILIES)
    # The real sizes are built in test_archs.py; here the test variants, and the members of a
    # family that has none (the CIFAR ResNets: resnet20 is test-sized itself).
    with_variant = {spec.family for spec in ARCH_SPECS.values() if spec.test_only}
    walked = set()
    for arch, spec in ARCH_SPECS.items():
        if not spec.test_only and spec.family in with_variant:
            continue
        walked.add(spec.family)
        net = build_classifier(arch, 5, spec.cifar_stem)
        assert isinstance(net, ARCH_FAMILIES[spec.family])
        target = net.cam_target()
        assert any(module is target for module in net.modules()), arch
        lib = library_model(arch, 5, spec.cifar_stem)
        assert lib.get_submodule(spec.head).out_features == 5, arch
    assert walked | {"library"} == set(ARCH_FAMILIES)


def test_the_docs_methods_table_is_generated_from_the_declarations():
    import pathlib
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert registry.with_methods_table(page) == page, "docs/methods.md is out of date: run make docs"
