"""Every setting is declared once: the engine's settings (``settings.SETTINGS``) and every
method's options (AdAutoMix's generator included) give the config fields, the flags, their help
and checks; a method's option reaches its model through the registry alone; the library API
resolves the same settings as the CLI; checkpoints written before the declarations resume."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import pytest
import torch

from adautomix_fast import api, registry
from adautomix_fast.config import DECLARATIONS, Config, resolve
from adautomix_fast.methods.options import FAMILIES
from adautomix_fast.models.specs import ARCH_NAMES
from adautomix_fast.presets import DATASET_DEFAULTS, PRESETS
from adautomix_fast.settings import SETTINGS
from adautomix_fast.step.optim import OPTIMIZERS
from adautomix_fast.train import get_args_parser

from cli_helpers import run_cli, single_error_line

FIXTURES = Path(__file__).parent / "data" / "checkpoints_v1"
# The flags of the run's actions, which are not settings of a run (written in train.py).
ACTIONS = {"--help", "--config", "--resume", "--eval-only", "--export", "--override-lr", "--allow-data-change",
           "--stop-after"}


def _actions():
    return [a for a in get_args_parser()._actions if a.option_strings and not set(a.option_strings) & ACTIONS]


# ---------------------------------------------------------------------------- one declaration each
def test_every_config_field_is_declared_once_and_every_flag_comes_from_a_declaration():
    names = [o.name for o in SETTINGS] + list(registry.OPTIONS)
    assert len(names) == len(set(names)), "a setting is declared twice"
    assert set(names) == set(Config.__dataclass_fields__)
    by_dest = {a.dest: a for a in _actions()}
    assert set(by_dest) == set(names)          # no hand-written flag of a setting, none missing
    for name, action in by_dest.items():
        declaration = DECLARATIONS[name]
        assert set(action.option_strings) >= set(declaration.flags), name
        field = Config.__dataclass_fields__[name]
        assert field.default == declaration.default and field.metadata["identity"] == declaration.identity


def test_every_declaration_has_help_a_range_or_choices_and_a_default_in_its_help():
    for option in SETTINGS + tuple(registry.OPTIONS.values()):
        assert option.help, option.name
        if option.type in (int, float):
            assert option.low is not None or option.high is not None, f"{option.name} declares no range"
        if option.type is str:
            assert option.choices or option.free_text, f"{option.name} declares no choices"
        if option.default is not None:
            option.check(option.default)       # the default is inside its own range
    for action in _actions():
        assert "(default: " in action.help, action.dest


def test_choices_come_from_their_source_tables():
    declared = {o.name: o for o in SETTINGS}
    assert declared["optimizer"].choices == OPTIMIZERS
    assert declared["method"].choices == tuple(registry.METHODS)
    arch_help = next(a.help for a in _actions() if a.dest == "arch")
    assert all(arch in arch_help for arch in ARCH_NAMES)


def _numbers(text: str) -> set[float]:
    return {float(n) for n in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)}


def _table_values(name: str) -> set:
    """Every value a table gives ``name``: the declared default, each data set's, each method's
    published value per family and trunk, each preset's."""
    values = {DECLARATIONS[name].default}
    values |= {d[name] for d in DATASET_DEFAULTS.values() if name in d}
    values |= {p[name] for p in PRESETS.values() if name in p}
    for cls in registry.METHODS.values():
        for family in FAMILIES:
            for arch in ARCH_NAMES:
                values.add(cls.published_defaults(family, arch).get(name))
    return {float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_no_help_text_restates_a_default_that_a_table_holds():
    """The help prose (the declaration's) names no value of the setting's tables: those are
    printed from the tables, after "(default:"; and each number printed there is a table's."""
    for action in _actions():
        declaration = DECLARATIONS[action.dest]
        table = _table_values(action.dest)
        bounds = {float(b) for b in (declaration.low, declaration.high) if b is not None}
        restated = (_numbers(declaration.help) & table) - bounds
        assert not restated, f"{declaration.flag}'s help restates {restated}: the tables print the defaults"
        printed = action.help.split("(default: ", 1)[1]
        if declaration.none_means:
            printed = printed.replace(declaration.none_means, "")
        assert _numbers(printed) <= table, f"{declaration.flag}: {printed!r} names a number no table holds"


# ---------------------------------------------------------------------------- methods' options
@pytest.mark.parametrize("args,takers", [
    (["--method", "mixup", "--beta", "0.9"], "adautomix only"),
    (["--method", "vanilla", "--mix-samples", "3"], "adautomix, automix and samix"),
    (["--method", "cutmix", "--puzzle-beta", "1"], "puzzlemix only"),
    (["--method", "automix", "--gen-objective", "adversarial"], "adautomix only"),
    (["--method", "mixup", "--gen-train-prob", "1"], "adautomix, automix and samix"),   # even at its default
])
def test_a_setting_of_another_method_is_refused_in_one_line_naming_its_methods(args, takers, tmp_path, capsys):
    code, _, err = run_cli(args + ["--output", str(tmp_path / "runs")], capsys)
    assert code == 2
    line = single_error_line(err)
    assert f"{args[2]} applies to {takers}" in line and f"--method {args[1]} does not use it" in line
    assert not (tmp_path / "runs").exists()


def test_adautomix_takes_its_own_settings_through_the_cli(tmp_path, capsys):
    code, _, err = run_cli(["--method", "adautomix", "--beta", "0.9", "--arch", "tiny", "--epochs", "1", "-j", "0",
                            "--vis-every", "0", "--output", str(tmp_path), "--run-name", "a"], capsys)
    assert code == 0, err
    assert "beta: 0.9" in (tmp_path / "a" / "config.yaml").read_text().splitlines()


def test_adautomix_settings_reach_the_model_through_the_registry():
    cfg = resolve({"method": "adautomix", "arch": "tiny", "beta": 0.9, "alpha": 0.25, "lam_margin": 0.1,
                   "mix_samples": 4, "upsample": "nearest", "gen_train_prob": 0.5})
    model = registry.build_model(cfg, 5, cifar_stem=True)
    assert (model.beta, model.alpha, model.lam_margin, model.mix_samples, model.generator.upsample,
            model.gen_train_prob) == (0.9, 0.25, 0.1, 4, "nearest", 0.5)


def test_every_option_is_handed_to_the_constructor_by_its_keyword_and_no_method_relists_them():
    for name, cls in registry.METHODS.items():
        assert "from_config" not in vars(cls), f"{name} overrides from_config: declare its options instead"
        cfg = resolve({"method": name, "arch": "tiny"})
        settings = cls.settings_from_config(cfg, registry.data_facts(cfg))
        signature = inspect.signature(cls.__init__)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        for key in settings:
            assert takes_any or key in signature.parameters, f"{name}.__init__ has no keyword {key}"
        for option in cls.all_options():
            if option.keyword is not None and getattr(cfg, option.name) is not None:
                assert settings[option.keyword] == getattr(cfg, option.name), (name, option.name)


def test_automix_takes_adautomix_generator_settings_but_not_its_adversarial_ones():
    own = registry.method_options("automix")
    assert {"mix_samples", "lam_margin", "lam_concat", "gen_norm", "upsample", "mask_loss"} <= set(own)
    assert not {"beta", "alpha", "gen_objective", "loss_cos", "random_mix_samples"} & set(own)


# ---------------------------------------------------------------------------- library = engine
# One data set (and, where the family depends on it, architecture) per family, as the CLI takes them.
CLI_FOR_FAMILY = {
    "cifar": [{"dataset": "cifar100", "arch": "r18"}, {"dataset": "cifar100", "arch": "rx50"}],
    "cifar-transformer": [{"dataset": "cifar100", "arch": "swin_t", "img_size": 224},
                          {"dataset": "cifar100", "arch": "deit_s", "img_size": 224}],
    "imagenet": [{"dataset": "imagenet", "arch": "r18"}, {"dataset": "imagenet", "arch": "r50"}],
    "fine-grained": [{"dataset": "cub200", "arch": "r18"}],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", list(registry.METHODS))
def test_mix_model_resolves_the_same_settings_as_the_cli(method, family):
    for cli in CLI_FOR_FAMILY[family]:
        cfg = resolve(dict(cli, method=method))
        assert registry.data_family(cfg.dataset, cfg.arch) == family
        engine = registry.METHODS[method].settings_from_config(cfg, registry.data_facts(cfg))
        library = api.published_settings(method, family, cli["arch"], image_size=registry.image_side(cfg))
        for data_fact in ("mean", "std"):      # the data set's normalisation: the caller's to pass
            engine.pop(data_fact, None), library.pop(data_fact, None)
        assert library == engine, (method, cli)


def test_mix_model_builds_with_the_published_settings_of_its_family():
    assert api.mix_model("cutmix", "tiny", 10).mix_alpha == 0.2                       # CIFAR
    assert api.mix_model("cutmix", "tiny", 10, family="imagenet").mix_alpha == 1.0
    model = api.mix_model("adautomix", "tiny", 10, family="imagenet")
    assert (model.mix_samples, model.beta, model.generator.lam_concat) == (2, 0.1, True)
    assert api.mix_model("adautomix", "tiny", 10, beta=0.5).beta == 0.5                 # an override
    with pytest.raises(TypeError, match="unknown settings"):
        api.mix_model("mixup", "tiny", 10, beta=0.5)


# ---------------------------------------------------------------------------- old checkpoints
@pytest.mark.parametrize("method", ["adautomix", "automix"])
def test_a_checkpoint_written_before_the_declarations_resumes_exactly(method, tmp_path, capsys):
    """tests/data/checkpoints_v1: digits/tiny runs of 2 epochs stopped after epoch 1 by the
    engine before this layout of settings, with the models it reached after epoch 2."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{method}-epoch1.pt", run / "checkpoint-last.pt")
    code, out, err = run_cli(["--resume", str(run), "-j", "0", "--vis-every", "0"], capsys)
    assert code == 0, err
    expected = torch.load(FIXTURES / f"{method}-epoch2-model.pt", weights_only=True)
    got = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert got["global_step"] == expected["global_step"]
    assert got["model"].keys() == expected["model"].keys()
    same_kernels = expected["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for key, value in expected["model"].items():
        if same_kernels:          # the machine that wrote them: bit for bit
            assert torch.equal(got["model"][key], value), key
        else:                     # another CPU's kernels round differently: the same run to float precision
            torch.testing.assert_close(got["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
