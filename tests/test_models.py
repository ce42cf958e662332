"""Model construction, API, distillation behaviour, feature maps and input errors."""

import pytest
import torch

from efficientformer import UnknownModelError, create_model, list_models
from efficientformer.models import VARIANTS
from efficientformer.models.layers import drop_path_rates

# Parameter counts with the distillation head, as the official code builds each model at 224 px
# (snap-research/EfficientFormer, models/efficientformer*.py; the papers round them, models/facts.py)
PARAMS = {
    "efficientformer_l1": 12_289_928,
    "efficientformer_l3": 31_406_000,
    "efficientformer_l7": 82_229_328,
    "efficientformerv2_s0": 3_600_256,
    "efficientformerv2_s1": 6_185_560,
    "efficientformerv2_s2": 12_710_112,
    "efficientformerv2_l": 26_322_288,
}
PARAMS_NO_DIST = {  # same, without dist_head
    "efficientformer_l1": 11_840_928,
    "efficientformer_l3": 30_893_000,
    "efficientformer_l7": 81_460_328,
    "efficientformerv2_s0": 3_423_256,
    "efficientformerv2_s1": 5_960_560,
    "efficientformerv2_s2": 12_421_112,
    "efficientformerv2_l": 25_937_288,
}
STAGE_CHANNELS = {n: VARIANTS[n].widths for n in VARIANTS}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(PARAMS))
def test_exact_parameter_counts(name):
    assert n_params(create_model(name)) == PARAMS[name]
    assert n_params(create_model(name, distillation=False)) == PARAMS_NO_DIST[name]


def test_list_and_names():
    assert list_models() == sorted(PARAMS)
    assert list_models("*v2*") == [
        "efficientformerv2_l",
        "efficientformerv2_s0",
        "efficientformerv2_s1",
        "efficientformerv2_s2",
    ]
    assert create_model("efficientformerv2_s0.snap_dist_in1k").spec.name == "efficientformerv2_s0"
    assert create_model("efficientformer-l3_3rdparty_8xb128_in1k").spec.name == "efficientformer_l3"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean .*efficientformerv2_s0"):
        create_model("efficientformerv2_so")
    with pytest.raises(UnknownModelError, match="unknown tag"):
        create_model("efficientformer_l1.bogus")


def test_distillation_outputs():
    model = create_model("efficientformerv2_s0", num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    mean = model(x)  # as it comes: one tensor in train mode too, so a user's own loop works
    assert isinstance(mean, torch.Tensor) and mean.shape == (2, 7)
    model.set_distilled_training(True)  # what the trainer does for DeiT distillation
    head, dist = model(x)
    assert head.shape == dist.shape == (2, 7)
    model.set_distilled_training(False)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        expected = (model.head(pooled) + model.head_dist(pooled)) / 2
        assert torch.allclose(model(x), expected)
    single = create_model("efficientformerv2_s0", num_classes=7, distillation=False).train()
    assert single(x).shape == (2, 7) and single.head_dist is None
    with pytest.raises(ValueError, match="distillation=True"):
        single.set_distilled_training(True)


def test_drop_path_schedule_and_defaults():
    assert drop_path_rates((1, 2), 0.5) == [[0.0], [0.25, 0.5]]
    l_model = create_model("efficientformerv2_l")
    rates = [m.drop_prob for m in l_model.modules() if type(m).__name__ == "DropPath"]
    assert (
        rates[0] == 0.0
        and rates[-1] == pytest.approx(0.1)
        and len(rates) == sum(VARIANTS["efficientformerv2_l"].depths)
    )
    assert all(
        m.drop_prob == 0.0 for m in create_model("efficientformer_l1").modules() if type(m).__name__ == "DropPath"
    )
    assert max(
        m.drop_prob
        for m in create_model("efficientformer_l1", drop_path_rate=0.2).modules()
        if type(m).__name__ == "DropPath"
    ) == pytest.approx(0.2)


def test_initialisation_matches_official_conventions():
    model = create_model("efficientformer_l1")
    for name, p in model.named_parameters():
        if name.endswith("pos_bias.table"):
            assert torch.count_nonzero(p) == 0
        if name.endswith(".scale"):
            assert torch.allclose(p, torch.full_like(p, 1e-5))
    assert model.head.bias.abs().sum() == 0 and model.head.weight.std() < 0.03


@pytest.mark.parametrize("name", list(PARAMS))
def test_features_only_stage_maps(name):
    model = create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(STAGE_CHANNELS[name])
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    picked = create_model(name, features_only=True, out_indices=(1, 3)).eval()
    assert [f.shape[1] for f in picked(torch.randn(1, 3, 64, 64))] == [STAGE_CHANNELS[name][1], STAGE_CHANNELS[name][3]]


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 64, 64), "4-D batch.*unsqueeze"),
        ((1, 1, 64, 64), "expected 3 input channels, got 1"),
        ((1, 3, 64, 70), "multiples of 32, got 64x70.*64x96"),
        ((2, 3, 16, 16), "multiples of 32"),
    ],
)
def test_bad_input_errors(shape, message):
    model = create_model("efficientformer_l1").eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_bad_construction_errors():
    with pytest.raises(ValueError, match="img_size"):
        create_model("efficientformer_l1", img_size=100)
    with pytest.raises(ValueError, match="out_indices"):
        create_model("efficientformer_l1", features_only=True, out_indices=(4,))


def test_reset_classifier_and_no_weight_decay():
    model = create_model("efficientformer_l1")
    model.reset_classifier(5)
    assert model.head.out_features == 5 and model.head_dist.out_features == 5
    nwd = model.no_weight_decay()
    assert any(n.endswith("pos_bias.table") for n in nwd) and any(n.endswith("ls1.scale") for n in nwd)


# -- argument checks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,error,needle",
    [
        ({"num_classes": -1}, ValueError, "num_classes must be at least 0, got -1"),
        ({"num_classes": "10"}, TypeError, "num_classes must be an integer, got '10'"),
        ({"num_classes": 2.5}, TypeError, "num_classes must be an integer"),
        ({"num_classes": True}, TypeError, "num_classes must be an integer"),
        ({"drop_path_rate": 2}, ValueError, r"drop_path_rate must be in \[0, 1\)"),
        ({"drop_path_rate": 1.0}, ValueError, r"drop_path_rate must be in \[0, 1\)"),
        ({"drop_path_rate": -0.1}, ValueError, r"drop_path_rate must be in \[0, 1\)"),
        ({"drop_path_rate": "0.1"}, TypeError, "drop_path_rate must be a number"),
        ({"img_size": 100}, ValueError, "multiples of 32"),
        ({"img_size": "224"}, TypeError, "img_size must be an integer"),
        ({"distillation": "yes"}, TypeError, "distillation must be True or False"),
        ({"out_indices": (0, 5)}, ValueError, r"out_indices must be stage numbers in 0\.\.3"),
        ({"pretrained": 1}, TypeError, "pretrained must be True or False"),
    ],
)
def test_create_model_checks_every_argument(kwargs, error, needle):
    with pytest.raises(error, match=needle) as info:
        create_model("efficientformerv2_s0", **kwargs)
    assert "\n" not in str(info.value)


def test_zero_classes_means_pooled_features():
    import torch

    model = create_model("efficientformerv2_s0", num_classes=0).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, model.num_features)


def test_models_package_has_no_import_cycle_or_lazy_hub_import():
    """registry <- checkpoint <- factory (which imports hub at the top); registry must not import checkpoint."""
    import ast
    import pathlib

    import efficientformer.models as pkg

    root = pathlib.Path(pkg.__file__).parent
    registry = ast.parse((root / "registry.py").read_text())
    imported = {n.module for n in ast.walk(registry) if isinstance(n, ast.ImportFrom)}
    assert not {"checkpoint", "factory", "hub"} & imported
    for file in root.glob("*.py"):  # no import statements hidden inside functions
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{file.name}: {node.name} imports inside the function"


def test_one_facts_table_feeds_cards_profile_benchmark_and_hub():
    from efficientformer.bench.latency import PUBLISHED_TOP1
    from efficientformer.bench.profile import PUBLISHED
    from efficientformer.models import FACTS, VARIANTS, hub
    from efficientformer.models.cards import model_card

    assert set(FACTS) == set(VARIANTS) == set(hub.MODEL_NAMES) == set(PUBLISHED)
    for name, f in FACTS.items():
        assert f.spec is VARIANTS[name]
        assert PUBLISHED[name] == (f.toolbox_params_m, f.gmacs)
        assert PUBLISHED_TOP1[name] == f.top1[300]
        assert hub.OFFICIAL_RELEASES[name] == f.official and hub.KNOWN_SHA256[name] == f.hub_sha256
    assert PUBLISHED["efficientformerv2_l"][1] == 2.56  # the README figure; two copies used to disagree (2.55)
    card = model_card("efficientformerv2_s0", img_size=64)
    assert card.published_gmacs == FACTS["efficientformerv2_s0"].gmacs
    assert card.published_top1 == {"300 epochs": 75.7, "450 epochs": 76.2}
    assert "int(224/0.875) = 256 (bicubic)" in card.eval_preprocessing
    import efficientformer.bench.latency as latency

    assert not hasattr(latency, "PUBLISHED_TOP1_450")
