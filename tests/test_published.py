"""The published numbers (adautomix_fast.published): every cell transcribed, each column's setting
resolvable by the engine's presets, and each ablation row's flags accepted by the training CLI."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from adautomix_fast import published as P
from adautomix_fast.presets import PRESETS
from adautomix_fast.registry import METHODS
from adautomix_fast.train import build_config, get_args_parser

# Numeric cells per table, counted by hand from the sources ("-" cells and "Gain" rows excluded).
EXPECTED_CELLS = {
    "table1": 9 * 9,            # 9 methods x (4 CIFAR-100 + 2 Tiny-ImageNet + 3 ImageNet-1K)
    "table2": 10 * 6,           # 10 methods x (CUB R18/R50, Aircraft R18/RX50, Cars R18/RX50)
    "table3": 2 * 6,            # CUB and Cars x 6 methods
    "table6": 2 * 7,            # ResNet-18 and Swin-T x 7 methods
    "table7": 4 * 10 + 5 * 10,  # Swin-T CIFAR-100: 4 methods, ResNet-50 CUB: 5 methods, 10 ratios each
    "table8": 5,
    "table9": 2 * 5,
    "table10": 5 * 3,           # N = 1..5 x (top-1, top-5, s/iter)
    "table11": 6,
    "released-cifar-cnn": 15 * 6,
    # 13 full rows x 6, ManifoldMix 2, AlignMix 4, TransMix 4, SMMix 3, AdAutoMix 3, Co-Mixup 0
    "released-cifar-vit": 13 * 6 + 2 + 4 + 4 + 3 + 3,
    "released-tiny": 15 * 2,
    "released-imagenet": 11 * 5,                   # SmoothMix, Attentive-CutMix, GridMix, Co-Mixup empty
    "released-fine-grained": 14 * 7 + 6,           # Co-Mixup empty, AdAutoMix without CUB RX50
}

# Rows of method tables that the engine does not implement.
NOT_IMPLEMENTED = {"attentive-cutmix", "co-mixup", "deit-mixup-cutmix", "alignmix", "transmix", "smmix", "snapmix"}

RANGES = {
    "top1": (0.0, 100.0), "top5": (0.0, 100.0), "top1_occluded": (0.0, 100.0),
    "ece": (0.0, 100.0), "s_per_iter": (0.0, 10.0),
}


def _config(preset, *flags):
    return build_config(get_args_parser().parse_args(["--preset", preset, *flags]), None)


def test_tables_in_order_and_cell_counts():
    assert list(P.TABLES) == list(EXPECTED_CELLS)
    for key, expected in EXPECTED_CELLS.items():
        assert len(P.cells(key)) == expected, key
    assert len(P.cells()) == sum(EXPECTED_CELLS.values())


def test_every_value_is_finite_and_plausible():
    for t, col, row, value in P.cells():
        low, high = RANGES[col.statistic]
        assert math.isfinite(value) and low < value <= high, (t.key, col.name, row, value)
        if col.statistic == "ece":
            assert value < 100


@pytest.mark.parametrize("key, name, row, value", [
    ("table1", "cifar100-r18", "vanilla", 78.04),
    ("table1", "imagenet-r50", "vanilla", 76.83),
    ("table1", "cifar100-r18", "adautomix", 82.32),
    ("table1", "cifar100-swin_t", "adautomix", 84.33),
    ("table1", "tiny-rx50", "adautomix", 72.89),
    ("table1", "imagenet-r50", "adautomix", 78.04),
    ("table1", "cifar100-rx50", "cutmix", 81.67),          # the paper's cell; README / Experiments.md: 78.32
    ("table2", "cub-r18", "vanilla", 77.68),
    ("table2", "cars-rx50", "vanilla", 90.15),
    ("table2", "cub-r18", "adautomix", 80.88),
    ("table2", "cars-rx50", "adautomix", 91.59),
    ("table2", "cub-r50", "saliencymix", 81.71),           # README / Experiments.md: 82.02
    ("table3", "cub-r50-transfer", "vanilla", 81.76),
    ("table3", "cub-r50-transfer", "adautomix", 83.36),    # "83.36(+0.43)"
    ("table3", "cars-r50-transfer", "adautomix", 89.65),
    ("table3", "cars-r50-transfer", "automix", 88.71),
    ("table6", "cifar100-r18", "mixup", 15.3),
    ("table6", "cifar100-r18", "adautomix", 3.2),          # "3.2 (-0.2)"
    ("table6", "cifar100-swin_t", "adautomix", 9.2),
    ("table6", "cifar100-swin_t", "puzzlemix", 16.7),
    ("table7", "cifar100-swin_t-occ0", "mixup", 76.82),
    ("table7", "cifar100-swin_t-occ90", "adautomix", 9.91),
    ("table7", "cub-r50-occ0", "vanilla", 82.15),
    ("table7", "cub-r50-occ90", "adautomix", 4.39),
    ("table7", "cub-r50-occ50", "adautomix", 55.74),
    ("table8", "cifar100-r18", "base", 79.38),
    ("table8", "cifar100-r18", "base+ace+mce+amce+cos", 81.55),
    ("table9", "cifar100-r18", "mix_alpha-0.2", 82.27),
    ("table9", "cifar100-r18", "mix_alpha-1.0", 82.32),
    ("table9", "cifar100-rx50", "mix_alpha-1.0", 84.40),
    ("table9", "cifar100-rx50", "mix_alpha-10.0", 83.63),
    ("table10", "cifar100-r18", "n-1", 78.04),
    ("table10", "cifar100-r18", "n-3", 82.32),
    ("table10", "cifar100-r18-top5", "n-3", 95.92),
    ("table10", "cifar100-r18-s-per-iter", "n-5", 0.2786),
    ("table11", "cifar100-r18", "vanilla", 76.42),
    ("table11", "cifar100-r18", "samix", 54.01),
    ("table11", "cifar100-r18", "adautomix", 81.55),
    ("released-cifar-cnn", "cifar100-r18-200", "vanilla", 76.42),
    ("released-cifar-cnn", "cifar100-rx50-800", "adautomix", 84.22),
    ("released-cifar-cnn", "cifar100-r18-200", "adautomix", 81.55),
    ("released-cifar-cnn", "cifar100-rx50-800", "cutmix", 78.32),
    ("released-cifar-cnn", "cifar100-rx50-200", "co-mixup", 81.73),
    ("released-cifar-vit", "cifar100-deit_s-200", "vanilla", 65.81),
    ("released-cifar-vit", "cifar100-convnext_t-600", "samix", 84.98),
    ("released-cifar-vit", "cifar100-swin_t-600", "adautomix", 85.34),
    ("released-cifar-vit", "cifar100-deit_s-200", "deit-mixup-cutmix", 75.92),
    ("released-tiny", "tiny-r18", "vanilla", 61.68),
    ("released-tiny", "tiny-r18", "saliencymix", 64.40),   # paper Table 1: 64.60
    ("released-tiny", "tiny-rx50", "adautomix", 72.89),
    ("released-imagenet", "imagenet-r18", "vanilla", 70.04),
    ("released-imagenet", "imagenet-rx101", "adautomix", 81.10),
    ("released-fine-grained", "cub-r18", "vanilla", 77.68),
    ("released-fine-grained", "cars-rx50", "adautomix", 91.59),
    ("released-fine-grained", "cub-r50", "saliencymix", 82.02),
    ("released-fine-grained", "cub-rx50", "samix", 86.33),
])
def test_spot_values(key, name, row, value):
    assert P.column(key, name).cells[row] == value


def test_absent_cells_and_skipped_rows():
    # "-" cells are absent, "Gain" rows are not data
    assert "adautomix" not in P.column("released-cifar-vit", "cifar100-deit_s-200").cells
    assert "adautomix" not in P.column("released-fine-grained", "cub-rx50").cells
    assert "co-mixup" not in P.table("released-imagenet").rows
    assert "manifoldmix" in P.column("released-cifar-vit", "cifar100-convnext_t-200").cells
    assert "manifoldmix" not in P.column("released-cifar-vit", "cifar100-swin_t-200").cells
    assert not any(row.lower().startswith("gain") for _, _, row, _ in P.cells())


def test_paper_and_released_discrepancies_are_kept_as_each_source_says():
    paper, released = P.column("table1", "cifar100-rx50"), P.column("released-cifar-cnn", "cifar100-rx50-800")
    differ = {row for row in paper.cells if paper.cells[row] != released.cells[row]}
    assert differ == {"cutmix", "saliencymix", "fmix", "resizemix"}
    assert "78.32" in paper.note
    tiny_p, tiny_r = P.column("table1", "tiny-r18"), P.column("released-tiny", "tiny-r18")
    assert {r for r in tiny_p.cells if tiny_p.cells[r] != tiny_r.cells[r]} == {"saliencymix", "resizemix"}
    for name in ("cub-r18", "cub-r50", "aircraft-r18", "aircraft-rx50", "cars-r18", "cars-rx50"):
        a, b = P.column("table2", name), P.column("released-fine-grained", name)
        differ = {r for r in a.cells if a.cells[r] != b.cells.get(r)}
        assert differ == ({"saliencymix"} if name == "cub-r50" else set()), name
    for name, released_name in (("cifar100-r18", "cifar100-r18-800"),):
        a, b = P.column("table1", name), P.column("released-cifar-cnn", released_name)
        assert all(b.cells[r] == v for r, v in a.cells.items())


def test_row_keys_of_method_tables_are_methods():
    for t in P.TABLES.values():
        if not t.rows_are_methods:
            continue
        unknown = [r for r in t.rows if r not in METHODS and r not in NOT_IMPLEMENTED]
        assert not unknown, (t.key, unknown)
    ablations = {t.key for t in P.TABLES.values() if not t.rows_are_methods}
    assert ablations == {"table8", "table9", "table10"}
    assert P.table("11").rows == ("vanilla", "mixup", "dada", "meada", "samix", "adautomix")


def test_columns_are_well_formed():
    for t in P.TABLES.values():
        assert t.columns and all(c.table == t.key for c in t.columns)
        names = [c.name for c in t.columns]
        assert len(set(names)) == len(names), t.key
        for c in t.columns:
            assert c.statistic in RANGES
            assert (c.occlusion is not None) == (c.statistic == "top1_occluded"), (t.key, c.name)
            if c.occlusion is not None:
                assert c.name.endswith(f"-occ{round(c.occlusion * 100)}") and 0.0 <= c.occlusion <= 0.9
    occ = P.table("7").columns
    assert [c.occlusion for c in occ[:10]] == [p / 10 for p in range(10)]
    assert {(c.dataset, c.arch, c.epochs) for c in occ} == {("cifar100", "swin_t", 200), ("cub200", "r50", 200)}


@pytest.mark.parametrize("key, epochs", [
    ("table2", {200}), ("table3", {100}), ("table6", {200}), ("table7", {200}), ("table8", {200}),
    ("table10", {800}), ("table11", {200}), ("released-tiny", {400}), ("released-imagenet", {100}),
    ("released-fine-grained", {200}),
])
def test_epochs(key, epochs):
    assert {c.epochs for c in P.table(key).columns} == epochs


def test_table1_and_ablation_epochs():
    got = {c.name: c.epochs for c in P.table("1").columns}
    assert got == {"cifar100-r18": 800, "cifar100-rx50": 800, "cifar100-swin_t": 200, "cifar100-convnext_t": 200,
                   "tiny-r18": 400, "tiny-rx50": 400, "imagenet-r18": 100, "imagenet-r34": 100, "imagenet-r50": 100}
    assert P.column("9", "cifar100-r18").epochs == 800 and P.column("9", "cifar100-rx50").epochs == 200
    for name in ("cifar100-r18", "cifar100-r18-top5", "cifar100-r18-s-per-iter"):
        assert P.column("10", name).note
    cnn = {c.name: c.epochs for c in P.table("released-cifar-cnn").columns}
    assert cnn == {f"cifar100-{a}-{e}": e for a in ("r18", "rx50") for e in (200, 400, 800)}
    vit = {c.name: c.epochs for c in P.table("released-cifar-vit").columns}
    assert vit == {f"cifar100-{a}-{e}": e for a in ("deit_s", "swin_t", "convnext_t") for e in (200, 600)}


def _settings():
    return sorted({(c.preset, c.epochs, c.dataset, c.arch) for t in P.TABLES.values() for c in t.columns
                   if c.preset is not None})


def test_presets_exist_and_resolve_to_the_column_setting():
    for t in P.TABLES.values():
        for c in t.columns:
            if c.preset is None:
                assert (c.dataset, c.arch) in {("imagenet", "r101"), ("imagenet", "rx101"), ("cub200", "rx50")}, \
                    (t.key, c.name)
                continue
            assert c.preset in PRESETS, (t.key, c.name, c.preset)
            assert PRESETS[c.preset]["dataset"] == c.dataset and PRESETS[c.preset]["arch"] == c.arch
    for preset, epochs, dataset, arch in _settings():
        cfg = _config(preset, "--epochs", str(epochs))
        assert (cfg.dataset, cfg.arch, cfg.epochs) == (dataset, arch, epochs), preset


def test_column_names_follow_the_data_set_and_arch():
    short = {"cifar100": "cifar100", "tiny-imagenet": "tiny", "imagenet": "imagenet", "cub200": "cub",
             "aircraft": "aircraft", "cars": "cars"}
    for t in P.TABLES.values():
        for c in t.columns:
            assert c.name.startswith(f"{short[c.dataset]}-{c.arch}"), (t.key, c.name)


def _expected_from_flags(flags):
    """The config values the flags name: ``--no-x`` -> x False, ``--x V`` -> x == V."""
    expected, i = {}, 0
    while i < len(flags):
        flag = flags[i]
        assert flag.startswith("--")
        if flag.startswith("--no-"):
            expected[flag[5:].replace("-", "_")] = False
            i += 1
        else:
            expected[flag[2:].replace("-", "_")] = flags[i + 1]
            i += 2
    return expected


def test_row_flags_name_cells_and_parse():
    for (key, row), flags in P.ROW_FLAGS.items():
        t = P.table(key)
        assert not t.rows_are_methods and row in t.rows, (key, row)
        expected = _expected_from_flags(flags)
        for preset in sorted({c.preset for c in t.columns}):
            cfg = _config(preset, *flags)
            for name, value in expected.items():
                got = getattr(cfg, name)
                want = value if isinstance(value, bool) else type(got)(value)
                assert got == want, (key, row, preset, name, got, value)
            if cfg.method == "adautomix":    # the loss switches not named stay on
                for switch in ("loss_one", "loss_mce", "loss_amce", "loss_k", "loss_cos"):
                    assert getattr(cfg, switch) is expected.get(switch, True), (key, row, switch)


def test_row_flags_cover_the_ablation_rows():
    covered = {(k, r) for k, r in P.ROW_FLAGS}
    rows = {(t.key, r) for t in P.TABLES.values() if not t.rows_are_methods for r in t.rows}
    # Table 8's "base" has no flags: without the clean CE the reported one-hot head is never trained.
    assert rows - covered == {("table8", "base")}
    assert P.ROW_FLAGS[("table10", "n-1")] == ("--method", "vanilla")
    assert P.ROW_FLAGS[("table10", "n-4")] == ("--method", "adautomix", "--mix-samples", "4")
    assert P.ROW_FLAGS[("table9", "mix_alpha-5.0")] == ("--method", "adautomix", "--mix-alpha", "5.0")
    assert P.ROW_FLAGS[("table8", "base+ace+mce+amce+cos")] == ("--method", "adautomix")


def test_lookups():
    assert P.table("1") is P.table("table1") is P.table("Table 1") is P.TABLES["table1"]
    assert P.table(" TABLE 10 ") is P.TABLES["table10"]
    assert P.table("released-cifar-cnn") is P.TABLES["released-cifar-cnn"]
    with pytest.raises(KeyError) as err:
        P.table("4")
    assert "table1" in str(err.value) and "released-imagenet" in str(err.value)
    with pytest.raises(KeyError) as err:
        P.column("1", "cifar100-r50")
    assert "cifar100-rx50" in str(err.value) and "imagenet-r34" in str(err.value)
    assert P.column("table2", "cub-r50").dataset == "cub200"
    flat = P.cells("6")
    assert all(t is P.TABLES["table6"] for t, _, _, _ in flat)
    assert (flat[0][1].name, flat[0][2], flat[0][3]) == ("cifar100-r18", "mixup", 15.3)


def test_immutable_and_hashable():
    col = P.column("1", "cifar100-r18")
    with pytest.raises(TypeError):
        col.cells["vanilla"] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        col.epochs = 200
    assert hash(col) == hash(P.column("table1", "cifar100-r18"))
    assert isinstance(hash(P.table("7")), int)


def test_sources_are_named():
    commit = re.compile(r"github\.com/JinXins/Adversarial-AutoMixup, commit [0-9a-f]{40}\)$")
    for t in P.TABLES.values():
        if t.key.startswith("released-"):
            assert commit.search(t.source) and P.RELEASED_COMMIT in t.source, t.key
        else:
            assert t.source == f"the paper (Qin et al., ICLR 2024), Table {t.key[len('table'):]}"
        assert t.title
