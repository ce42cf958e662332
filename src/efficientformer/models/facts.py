"""THE table of per-model facts: architecture spec, published figures, evaluation protocol, weights and licence.

Everything else that states a fact about a variant derives it from :data:`FACTS`: the model cards
(``models/cards.py``), the ``profile`` command's published targets (``bench/profile.py: PUBLISHED``), the
benchmark's top-1 column (``bench/latency.py``) and the pretrained-weights hub (``models/hub.py``). Adding a
variant means adding its spec (``efficientformer.py`` / ``efficientformer_v2.py``) and one row here.

Sources: the official README and papers (snap-research/EfficientFormer; figures are the official ``toolbox.py``
convention, both heads), the official ``toolbox.py`` counts to three decimals (run on the official model code;
reproduced by ``bench/profile.py``), timm's result tables for the hub copies (crop 0.95), and the official LICENSE
file.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ModelSpec
from .efficientformer import V1_VARIANTS
from .efficientformer_v2 import V2_VARIANTS

#: The published evaluation protocol (official ``main.py``): resize the short side to ``int(img_size / crop_pct)``
#: (bicubic), centre-crop ``img_size``, normalise with the ImageNet mean/std. ``data/constants.py`` re-exports these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_PCT = 0.875
EVAL_CROP = 224
EVAL_INTERPOLATION = "bicubic"

OFFICIAL_REPO = "https://github.com/snap-research/EfficientFormer"

#: What the official LICENSE file says (read at snap-research/EfficientFormer commit 4382af4): Snap's own code is
#: under an MIT-style permission notice ("Copyright (c) 2022 Snap Inc."), and the parts derived from LeViT,
#: PoolFormer and mmcv keep their Apache-2.0 licences. The file does not name a separate licence for the weights.
OFFICIAL_LICENCE = (
    "official code: MIT-style permission notice (Copyright (c) 2022 Snap Inc.) with Apache-2.0 for its LeViT, "
    "PoolFormer and mmcv parts (official LICENSE file); the weights carry no separate licence statement there"
)
#: timm's pretrained cfg for these models says ``license='apache-2.0'`` for the hub copies.
HUB_LICENCE = "apache-2.0 (as declared in timm's pretrained cfg for the hub copies)"

#: The pretrained tag of the hub copies (timm's name).
HUB_TAG = "snap_dist_in1k"
HUB_URL = "https://huggingface.co/timm/{name}.{tag}/resolve/main/model.safetensors"

V1_LATENCY = "iPhone 12, CoreML, iOS 15 (EfficientFormer paper/README)"
V2_LATENCY = "iPhone 12, CoreML, iOS 16, Xcode 14 benchmark (EfficientFormerV2 README)"
PUBLISHED_PROTOCOL = "official README: ImageNet-1k val, resize 256 + centre crop 224, distilled head mean"


@dataclass(frozen=True)
class CheckpointSource:
    """A checkpoint as published in the official README (Google Drive: not downloaded automatically)."""

    filename: str
    epochs: int
    url: str
    sha256: str | None = None  # None: no hash verified by us (see models/hub.py)


@dataclass(frozen=True)
class ModelFacts:
    spec: ModelSpec
    params_m: float  # README / paper figure (toolbox.py convention, both heads)
    gmacs: float  # README / paper figure at 224
    toolbox_params_m: float  # the official toolbox.py count to three decimals (what bench/profile.py reproduces)
    top1: dict[int, float]  # training epochs -> published ImageNet-1k top-1 (%), PUBLISHED_PROTOCOL
    iphone12_latency_ms: float
    latency_note: str
    official: tuple[CheckpointSource, ...]
    hub_epochs: int  # which official schedule timm's hub copy is (its numbers match that one)
    hub_top1: float  # timm results-imagenet.csv, crop 0.95
    hub_sha256: str | None = None  # enforced by models/hub.py when set; None on purpose (never verified by us)
    hub_licence: str = HUB_LICENCE
    eval_img_size: int = EVAL_CROP
    eval_crop_pct: float = EVAL_CROP_PCT
    eval_interpolation: str = EVAL_INTERPOLATION

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    def hub_url(self, tag: str = HUB_TAG) -> str:
        return HUB_URL.format(name=self.name, tag=tag)


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


_V1, _V2 = V1_VARIANTS, V2_VARIANTS

FACTS: dict[str, ModelFacts] = {
    f.name: f
    for f in (
        ModelFacts(
            _V1["efficientformer_l1"], 12.3, 1.3, 12.250, {300: 79.2, 1000: 80.2}, 1.6, V1_LATENCY,
            (
                CheckpointSource("efficientformer_l1_300d.pth", 300, _drive("1wtEmkshLFEYFsX5YhBttBOGYaRvDR7nu")),
                CheckpointSource("L1-1000 (README link; file name not given)", 1000,
                                 _drive("11SbX-3cfqTOc247xKYubrAjBiUmr818y")),
            ),
            hub_epochs=1000, hub_top1=80.502,
        ),
        ModelFacts(
            _V1["efficientformer_l3"], 31.3, 3.9, 31.330, {300: 82.4}, 3.0, V1_LATENCY,
            (CheckpointSource("efficientformer_l3_300d.pth", 300, _drive("1OyyjKKxDyMj-BcfInp4GlDdwLu3hc30m")),),
            hub_epochs=300, hub_top1=82.562,
        ),
        ModelFacts(
            _V1["efficientformer_l7"], 82.1, 10.2, 82.107, {300: 83.3}, 7.0, V1_LATENCY,
            (CheckpointSource("efficientformer_l7_300d.pth", 300, _drive("1cVw-pctJwgvGafeouynqWWCwgkcoFMM5")),),
            hub_epochs=300, hub_top1=83.396,
        ),
        ModelFacts(
            _V2["efficientformerv2_s0"], 3.5, 0.40, 3.535, {300: 75.7, 450: 76.2}, 0.9, V2_LATENCY,
            (CheckpointSource("eformer_s0_450.pth", 450, _drive("1PXb7b9pv9ZB4cfkRkYEdwgWuVwvEiazq")),),
            hub_epochs=450, hub_top1=76.102,
        ),
        ModelFacts(
            _V2["efficientformerv2_s1"], 6.1, 0.65, 6.093, {300: 79.0, 450: 79.7}, 1.1, V2_LATENCY,
            (CheckpointSource("eformer_s1_450.pth", 450, _drive("1EKe1vt-3mG7iceVIMaET_DyISzVTJMn8")),),
            hub_epochs=450, hub_top1=79.684,
        ),
        ModelFacts(
            _V2["efficientformerv2_s2"], 12.6, 1.25, 12.551, {300: 81.6, 450: 82.0}, 1.6, V2_LATENCY,
            (CheckpointSource("eformer_s2_450.pth", 450, _drive("1gjbFyB5T_yAkmzHNuXEljqScYVQZafMQ")),),
            hub_epochs=450, hub_top1=82.156,
        ),
        ModelFacts(
            _V2["efficientformerv2_l"], 26.1, 2.56, 26.069, {300: 83.3, 450: 83.5}, 2.7, V2_LATENCY,
            (CheckpointSource("eformer_l_450.pth", 450, _drive("1sRXNBHl_ewHBMwwYZVsOJo1k6JpcNJn-")),),
            hub_epochs=450, hub_top1=83.642,
        ),
    )
}  # fmt: skip

#: Baselines the benchmark compares against (not our models): published ImageNet-1k top-1 (%).
BASELINE_TOP1 = {"mobilenetv2_100": 72.0}


def facts(name: str) -> ModelFacts:
    """The facts of a registered variant (exact name; see :func:`efficientformer.models.resolve_name`)."""
    try:
        return FACTS[name]
    except KeyError:
        raise KeyError(f"no facts for {name!r}; known: {', '.join(FACTS)}") from None
