"""Every registered model: shapes, golden parameter counts, names, arguments, save/load."""

import inspect
import re
from pathlib import Path
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

import keras
import numpy as np
import pytest

from models import create_model, get_entry, get_recipe, list_models
from models.describe import HEADER, Row, deep_graphs, markdown_table, mult_adds, trainable_params

MODELS_MD = Path(__file__).resolve().parents[1] / "docs" / "MODELS.md"

# Trainable parameters at 10 and 100 classes, as measured; docs/MODELS.md shows how they compare
# with the papers.
GOLDEN = {
    "densenet_bc_100_12": (769_162, 800_032),
    "densenet_bc_100_24": (3_020_506, 3_082_156),
    "densenet_bc_160_24": (6_831_466, 6_930_916),
    "densenet_bc_190_40": (25_624_430, 25_821_620),
    "densenet_bc_250_24": (15_324_406, 15_480_556),
    "lenet": (62_006, 69_656),
    "nin": (966_986, 984_356),
    "nin_bn": (968_404, 985_864),
    "preact_resnet110": (1_730_522, 1_736_372),
    "preact_resnet164": (1_703_258, 1_726_388),
    "resnet110": (1_727_962, 1_733_812),
    "resnet1202": (19_421_274, 19_427_124),
    "resnet18": (11_173_962, 11_220_132),
    "resnet20": (269_722, 275_572),
    "resnet32": (464_154, 470_004),
    "resnet44": (658_586, 664_436),
    "resnet50": (755_802, 761_652),
    "resnet56": (853_018, 858_868),
    "resnext29_16x64d": (68_155_210, 68_247_460),
    "resnext29_4x64d": (17_562_442, 17_654_692),
    "resnext29_8x64d": (34_426_698, 34_518_948),
    "se_resnext29_4x64d": (18_084_250, 18_176_500),
    "vgg19": (38_953_418, 39_322_148),
    "wrn_16_8": (10_961_370, 11_007_540),
    "wrn_28_10": (36_479_194, 36_536_884),
    "wrn_40_4": (8_949_210, 8_972_340),
}

# Above ~10M parameters, or near a thousand layers and more: built once (at 100 classes), marked slow.
SLOW = {"densenet_bc_190_40", "densenet_bc_250_24", "resnet18", "resnet1202", "resnext29_16x64d",
        "resnext29_4x64d", "resnext29_8x64d", "se_resnext29_4x64d", "vgg19", "wrn_16_8", "wrn_28_10"}

# Models whose paper figure is our count truncated, not rounded: ResNeXt-29 16x64d has 68,155,210
# parameters, "68.1M" in the paper (docs/MODELS.md says why the architecture is still the paper's).
TRUNCATED_IN_PAPER = {"resnext29_16x64d"}

RECIPE_KEYS = {"epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule",
               "lr_milestones", "lr_factor", "preprocess", "augment", "source"}

# Keras' automatic names after the first: a layer named like this was left unnamed by its builder.
AUTO_NAME = re.compile(
    r"(input_layer|conv2d|dense|batch_normalization|re_lu|activation|add|concatenate|multiply|"
    r"dropout|max_pooling2d|average_pooling2d|global_average_pooling2d|flatten|reshape|rescaling)_\d+")

# Small configurations of every builder, through the registry (same builder, fewer layers).
SMALL = {
    "lenet": {},
    "nin": {},
    "nin_bn": {},
    "vgg19": dict(depth=11),
    "resnet20": dict(depth=8, shortcut="B"),
    "resnet18": dict(blocks=(1, 1, 1, 1)),
    "preact_resnet110": dict(depth=8),
    "preact_resnet164": dict(depth=11),
    "wrn_16_8": dict(depth=10, width=1, dropout=0.3),
    "densenet_bc_100_12": dict(depth=10, growth_rate=4),
    "resnext29_4x64d": dict(depth=11, cardinality=4, base_width=4, widen_factor=1),
    "se_resnext29_4x64d": dict(depth=11, cardinality=4, base_width=4, widen_factor=1, se_reduction=4),
}


def _marked(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _images(batch=2, shape=(32, 32, 3), seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def _check_forward(model, num_classes):
    # In training mode, as a new model is used: at initialisation the moving statistics are 0 and
    # 1, so in inference mode batch norm is the identity and resnet1202's 600 residual additions
    # overflow float32.
    y = keras.ops.convert_to_numpy(model(_images(), training=True))
    assert y.shape == (2, num_classes)
    assert np.isfinite(y).all()


def _check_layers(model):
    for layer in model.layers:
        assert type(layer).__module__.startswith("keras.src.layers."), f"{layer.name} is not a stock layer"
        assert not isinstance(layer, keras.layers.Lambda)
        assert not AUTO_NAME.fullmatch(layer.name), f"layer {layer.name!r} was not named by its builder"


def _rounds_to(count, printed, rounding=ROUND_HALF_UP):
    """Whether `count` prints as `printed` ("0.27M", "62,006") at the precision printed."""
    if not printed.endswith("M"):
        return count == int(printed.replace(",", ""))
    quantum = Decimal(printed[:-1]).as_tuple().exponent
    return (Decimal(count) / 10**6).quantize(Decimal(1).scaleb(quantum), rounding) == Decimal(printed[:-1])


def test_golden_table_covers_the_registry():
    assert sorted(GOLDEN) == list_models()
    assert SLOW <= set(GOLDEN)


@pytest.mark.parametrize("name", _marked(list_models()))
def test_model_builds_with_its_golden_parameter_count(name):
    params_10, params_100 = GOLDEN[name]
    entry = get_entry(name)
    assert "num_classes" not in entry.kwargs
    assert inspect.signature(entry.builder).parameters["num_classes"].default == 10
    with deep_graphs():
        model = create_model(name, num_classes=100)
    assert model.name == name
    assert trainable_params(model) == params_100
    _check_forward(model, 100)
    _check_layers(model)
    if name in SLOW:
        # Built once: the 10-class model differs only in the width of its dense classifier.
        logits = model.get_layer("logits")
        assert isinstance(logits, keras.layers.Dense)
        assert params_100 - params_10 == 90 * (logits.input.shape[-1] + 1)
        _check_docs_row(name, params_10, mult_adds(model) - 90 * logits.input.shape[-1])
        return
    names = [layer.name for layer in model.layers]
    del model
    model = create_model(name)
    assert model.name == name
    assert trainable_params(model) == params_10
    _check_forward(model, 10)
    # Keras numbers the layers it names itself, so only builder-given names repeat exactly.
    assert [layer.name for layer in model.layers] == names
    _check_docs_row(name, params_10, mult_adds(model))


def _check_docs_row(name, params, adds):
    """docs/MODELS.md's row of `name` is the one `python -m models.describe` prints for the model as built."""
    entry = get_entry(name)
    expected = markdown_table([Row(name, params, adds, entry.paper, entry.paper_params)]).splitlines()[2]
    rows = [line for line in MODELS_MD.read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert rows == [expected], f"docs/MODELS.md is stale for {name}: run python -m models.describe > docs/MODELS.md"


def test_models_md_is_what_describe_prints():
    """Around the rows (each checked where its model is built above): the header, the table's head, every
    registered model once and in order, nothing else."""
    text = MODELS_MD.read_text()
    head, table = text.split("\n## Table\n\n")
    assert head == HEADER
    lines = table.splitlines()
    assert lines[:2] == markdown_table([]).splitlines()[:2]
    assert [line.split("`")[1] for line in lines[2:]] == list_models(), \
        "docs/MODELS.md lists other models than the registry: run python -m models.describe > docs/MODELS.md"


@pytest.mark.parametrize("name", [n for n in list_models() if get_entry(n).paper_params])
def test_count_prints_as_the_papers_figure(name):
    printed = get_entry(name).paper_params
    count = GOLDEN[name][0]
    if name in TRUNCATED_IN_PAPER:
        assert not _rounds_to(count, printed)
        assert _rounds_to(count, printed, ROUND_DOWN)
    else:
        assert _rounds_to(count, printed), f"{count:,} does not print as {printed}"


def test_papers_figure_check_uses_the_printed_precision():
    assert _rounds_to(269_722, "0.27M") and not _rounds_to(276_000, "0.27M")
    assert _rounds_to(38_953_418, "39.0M") and not _rounds_to(38_949_999, "39.0M")
    assert _rounds_to(62_006, "62,006") and not _rounds_to(62_007, "62,006")


@pytest.mark.parametrize("name", list_models())
def test_recipe_is_complete(name):
    recipe = get_recipe(name)
    assert set(recipe) == RECIPE_KEYS
    assert recipe["schedule"] == "step" and recipe["source"]
    milestones, factors = recipe["lr_milestones"], recipe["lr_factor"]
    assert milestones == sorted(milestones) and 0 < milestones[0] and milestones[-1] < recipe["epochs"]
    assert len(factors) in (1, len(milestones)) and all(0 < f < 1 for f in factors)
    assert recipe["lr"] > 0 and 0 <= recipe["momentum"] < 1 and recipe["weight_decay"] >= 0


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as error:
        create_model("resnet21")
    for name in list_models():
        assert name in str(error.value)


@pytest.mark.parametrize("name, overrides, message", [
    ("resnet20", dict(depth=21), r"depth must be 6n\+2 .*; got 21"),
    ("nin", dict(dropout=1.0), r"dropout must be in \[0, 1\); got 1.0"),
    ("nin", dict(num_classes=1), r"num_classes must be an integer >= 2; got 1"),
    ("vgg19", dict(depth=17), r"depth must be one of \[11, 13, 16, 19\]; got 17"),
    ("vgg19", dict(input_shape=(28, 28, 3)), r"multiples of 32"),
    ("preact_resnet110", dict(block="wide"), r"block must be 'basic' or 'bottleneck'; got 'wide'"),
    ("preact_resnet164", dict(depth=100), r"depth must be 9n\+2 .* bottleneck units .*; got 100"),
    ("resnet18", dict(blocks=(2, 2, 2)), r"blocks must be four positive integers.*; got \(2, 2, 2\)"),
    ("wrn_28_10", dict(depth=27), r"depth must be 6n\+4 .*; got 27"),
    ("wrn_28_10", dict(width=0), r"width must be a positive integer .*; got 0"),
    ("wrn_28_10", dict(dropout=-0.1), r"dropout must be in \[0, 1\); got -0.1"),
    ("densenet_bc_100_12", dict(depth=99), r"depth must be 6n\+4 .*; got 99"),
    ("densenet_bc_100_12", dict(growth_rate=0), r"growth_rate must be a positive integer .*; got 0"),
    ("densenet_bc_100_12", dict(compression=0.0), r"compression must be in \(0, 1\] .*; got 0.0"),
    ("resnext29_8x64d", dict(depth=30), r"depth must be 9n\+2 .*; got 30"),
    ("resnext29_8x64d", dict(cardinality=0), r"cardinality must be a positive integer .*; got 0"),
    ("se_resnext29_4x64d", dict(se_reduction=-1), r"se_reduction must be 0 .*; got -1"),
])
def test_builder_rejects_bad_arguments(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **overrides)


@pytest.mark.parametrize("name", SMALL)
def test_weight_decay_is_coupled_l2_on_kernels_only(name):
    # keras L2(l) has gradient 2 * l * w, so the papers' decay d is L2(d / 2) (models/layers.py).
    model = create_model(name, weight_decay=1e-4, **SMALL[name])
    kernels = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            assert isinstance(layer.kernel_regularizer, keras.regularizers.L2), layer.name
            assert layer.kernel_regularizer.l2 == pytest.approx(5e-5)
            assert layer.bias_regularizer is None
            kernels += 1
        elif isinstance(layer, keras.layers.BatchNormalization):
            assert layer.gamma_regularizer is None and layer.beta_regularizer is None
    assert kernels and len(model.losses) == kernels
    _check_layers(model)


def test_mult_adds_count_groups():
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", groups=4)(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    assert mult_adds(model) == 4 * 4 * 3 * 3 * (16 // 4) * 32 + 4 * 4 * 32 * 10


def test_resnext_blocks_are_grouped_and_se_gates_the_residual():
    model = create_model("se_resnext29_4x64d", **SMALL["se_resnext29_4x64d"])
    conv2 = model.get_layer("stage2_block1_conv2")
    assert conv2.groups == 4 and conv2.kernel.shape == (3, 3, 32 // 4, 32)
    assert model.get_layer("stage3_block1_se_scale").output.shape == (None, 8, 8, 256)
    assert model.get_layer("stage3_block1_se_reduce").units == 256 // 4


def test_densenet_has_two_transitions_and_a_2k_stem():
    model = create_model("densenet_bc_100_12", depth=10, growth_rate=4)
    pools = [layer.name for layer in model.layers if isinstance(layer, keras.layers.AveragePooling2D)]
    assert pools == ["transition1_pool", "transition2_pool"]
    assert model.get_layer("stem_conv").filters == 8


def test_wrn_projects_only_where_the_shape_changes():
    model = create_model("wrn_16_8", width=2)
    projections = sorted(layer.name for layer in model.layers if layer.name.endswith("_shortcut_conv"))
    assert projections == ["stage1_block1_shortcut_conv", "stage2_block1_shortcut_conv",
                           "stage3_block1_shortcut_conv"]


@pytest.mark.parametrize("name, overrides", [
    ("lenet", {}),
    ("resnet20", {}),
    ("resnext29_4x64d", SMALL["resnext29_4x64d"]),
    ("se_resnext29_4x64d", SMALL["se_resnext29_4x64d"]),
    ("densenet_bc_100_12", {}),
], ids=["lenet", "resnet20", "resnext29_small", "se_resnext29_small", "densenet_bc_100_12"])
def test_keras_file_round_trip_predicts_the_same(name, overrides, tmp_path):
    model = create_model(name, **overrides)
    x = _images()
    model(x, training=True)  # moves the batch-norm statistics off their initial values
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode on, no custom objects
    assert loaded.name == name
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected,
                               rtol=1e-5, atol=1e-6)
