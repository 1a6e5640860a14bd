"""UTAD (Unsupervised Two-stage Anomaly Detection): IE-Net turns an image x into an anomaly-free
impression h, Expert-Net restores its details into a high-fidelity reconstruction x_hat (and
mimics IE-Net from x as the naive impression h_tilde), and the perceptual measurement (eq. 8)
compares them in the feature space of a frozen pretrained network.

    model = UTAD()                                   # efficientnet_lite0 taps, packaged ImageNet weights
    model = UTAD(backbone="vgg19", vgg_weights="vgg19.pth")   # the paper's VGG-19 (None: random, warned)
    model = UTAD(weights="random")                   # random lite0 features, with a warning (comparison)
    fastad.engine.train(model, train_images)         # [N, 3, 128, 128]; stages "impression", "expert"
    result = model.score(test_images)                # AnomalyResult(image_scores [B], maps [B, H, W])
    masks = model.segment(test_images)               # eq. 9 at the model's pixel threshold
    fastad.metrics.iou(result.maps, gt_masks, model.segmentation_threshold())

Native size 128: score() resizes other sizes to 128 and the maps back. Eq. 8 as built:
M = sum_l w_l up(d_l(x, x_hat)) + naive_weight * sum_l w'_l up(d_l(h_tilde, h)), l over the
perceptual network's taps (`layers` of a zoo backbone; conv1_2, conv2_2, conv3_4 of VGG-19), d_l
the per-location mean squared feature difference (fastad.models.utad.measure);
prepare_scoring sets each layer weight to 1 / (its mean over normal training images) and
`pixel_threshold` (eq. 9; a map value, not the image verdict's threshold) to the
`pixel_quantile` quantile of the normal training images' map
values; the image score is the map's maximum. Why, and what was measured: models/utad/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from torch import nn

from fastad.checks import check_choice, check_int, check_ints, check_optional_path, check_real
from fastad.models.base import AnomalyModel, AnomalyResult, ModelConfig
from fastad.models.components.backbones import LAYER_NAMES, VGG19Features
from fastad.models.components.zoo import PRETRAINED, RANDOM, backbone_spec, check_taps, check_weights, lite_names
from fastad.models.components.zoo import model_backbone
from fastad.models.registry import register_model
from fastad.models.utad.expert import ExpertNet
from fastad.models.utad.impression import ImpressionExtractor, resize_square
from fastad.models.utad.measure import layer_distances, segment

#: the native input side: the builtin crops are 128 px and IE-Net's global latent fixes the size
IMAGE_SIZE = 128
#: the `backbone` config values: the EfficientNet-Lite zoo entries (the first the default), VGG-19
BACKBONES = (*lite_names(), "vgg19")
#: the zoo taps the perceptual measurement compares unless `layers` says otherwise: the two
#: coarsest (4 x 4 and 8 x 8 at 128 px), chosen on the val split of wide: over the VGG-like
#: stride2-16 mix, whose fine taps mostly measure how blurry the reconstruction is (README)
DEFAULT_TAPS = ("stride16", "stride32")


class ZooFeatures(nn.Module):
    """A frozen zoo backbone as UTAD's perceptual network: images [B, 3, H, W] in [0, 1] -> the
    tuple of its `taps` maps, in order, under torch.no_grad (see components.zoo.build_backbone)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True):
        """Stays in eval mode (frozen BatchNorm statistics) whatever `mode`."""
        super().train(mode)
        self.net.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net(images).values())


@register_model
class UTAD(AnomalyModel):
    """IE-Net, Expert-Net and the perceptual measurement; stages "impression" then "expert".

    Config (UTAD.Config):
        ie_size: the side IE-Net works at, in [16, 128] (images are resized to it, the
            impression back to 128).
        ie_widths: IE-Net inception block widths (4 blocks, each divisible by 4).
        latent_dim, ie_hidden: IE-Net latent size and MLP width.
        alpha, beta, gamma: eq. 6 weights of the MI (eq. 4), KL (eq. 2) and reconstruction (eq. 5)
            terms (>= 0; the KL is a sum over latent dims, so beta is small).
        expert_width, detail_dim, detail_width, mlp_hidden, n_residual, lambda_detail: Expert-Net
            (see fastad.models.utad.expert.ExpertNet).
        batch_size: images per training step (>= 2: the MI loss shuffles codes across the batch).
        ie_lr, expert_lr: Adam learning rates of the two stages.
        backbone: the perceptual network, one of BACKBONES: "efficientnet_lite0" (the default;
            or lite1, lite2) from the backbone zoo, or "vgg19" (the paper's). A config that names
            vgg_weights but no backbone (every config saved before the zoo) means "vgg19".
        weights: for a zoo backbone "pretrained" (the default: its packaged ImageNet weights),
            "random" (its initialisation from vgg_seed, with a UserWarning: the comparison run) or
            a local weights file; None with "vgg19" (which reads vgg_weights).
        layers: the zoo taps compared, in network order; None: DEFAULT_TAPS (None with "vgg19":
            conv1_2, conv2_2, conv3_4).
        vgg_weights: backbone "vgg19" only: a local VGG-19 weights file (torchvision layout) or
            None (fixed random features from vgg_seed, with a UserWarning).
        vgg_seed: seed of the random perceptual features (VGG-19 without a file, or
            weights="random").
        naive_weight: weight (>= 0) of the naive-impression term of eq. 8; 0 (the default) drops
            the term and skips its two VGG passes.
        pixel_quantile: quantile in (0, 1) of normal training map values that becomes `pixel_threshold`.
        pixel_threshold_images: how many training images prepare_scoring measures (the first ones)
            for the layer weights and `pixel_threshold`.
        (Configs saved before these names held threshold_quantile and calibration_images; they
        load as the new keys.)
    """

    @dataclass(frozen=True)
    class Config(ModelConfig):
        RENAMED: ClassVar[dict[str, str]] = {"threshold_quantile": "pixel_quantile",
                                             "calibration_images": "pixel_threshold_images"}
        ie_size: int = 64
        ie_widths: tuple[int, ...] = (8, 16, 32, 64)
        latent_dim: int = 64
        ie_hidden: int = 256
        alpha: float = 0.1
        beta: float = 1e-5
        gamma: float = 1.0
        expert_width: int = 8
        detail_dim: int = 16
        detail_width: int = 16
        mlp_hidden: int = 64
        n_residual: int = 2
        lambda_detail: float = 1.0
        batch_size: int = 4
        ie_lr: float = 1e-3
        expert_lr: float = 1e-3
        backbone: str = BACKBONES[0]
        weights: str | None = PRETRAINED
        layers: tuple[str, ...] | None = None
        vgg_weights: str | None = None
        vgg_seed: int = 0
        naive_weight: float = 0.0
        pixel_quantile: float = 0.99
        pixel_threshold_images: int = 8

        def __post_init__(self):
            check_int("ie_size", self.ie_size, 16, IMAGE_SIZE)
            object.__setattr__(self, "ie_widths", check_ints("ie_widths", self.ie_widths, 4))
            for key in ("latent_dim", "ie_hidden", "expert_width", "detail_dim", "detail_width", "mlp_hidden",
                        "pixel_threshold_images"):
                check_int(key, getattr(self, key), 1)
            check_int("n_residual", self.n_residual, 0)
            check_int("vgg_seed", self.vgg_seed, 0)
            check_int("batch_size", self.batch_size, 2)  # the MI loss shuffles codes across the batch
            for key in ("alpha", "beta", "gamma", "lambda_detail", "naive_weight"):
                check_real(key, getattr(self, key), 0.0)
            for key in ("ie_lr", "expert_lr"):
                check_real(key, getattr(self, key), 0.0, strict=True)
            if not 0.0 < check_real("pixel_quantile", self.pixel_quantile) < 1.0:
                raise ValueError(f"pixel_quantile must be in (0, 1), got {self.pixel_quantile}")
            object.__setattr__(self, "vgg_weights", check_optional_path("vgg_weights", self.vgg_weights))
            self._check_backbone()

        @classmethod
        def from_dict(cls, values: dict, model: str) -> "UTAD.Config":
            """ModelConfig.from_dict, where vgg_weights without a backbone (a config saved before
            the backbone zoo, or one asking for VGG-19 by its file) means backbone "vgg19"."""
            if "vgg_weights" in values and "backbone" not in values:
                values = {**values, "backbone": "vgg19"}
            return super().from_dict(values, model)

        def _check_backbone(self) -> None:
            check_choice("backbone", self.backbone, BACKBONES)
            if self.backbone == "vgg19":
                if self.weights not in (None, PRETRAINED) or self.layers is not None:
                    raise ValueError(f"weights and layers are for a zoo backbone; backbone 'vgg19' reads vgg_weights "
                                     f"and taps {', '.join(LAYER_NAMES)}, got weights={self.weights!r}, "
                                     f"layers={self.layers!r}")
                object.__setattr__(self, "weights", None)
                return
            if self.vgg_weights is not None:
                raise ValueError(f"vgg_weights is for backbone 'vgg19', got it with backbone {self.backbone!r}")
            if self.weights is None:
                raise ValueError(f"weights must be {PRETRAINED!r}, {RANDOM!r} or a file path for backbone "
                                 f"{self.backbone!r}, got None")
            object.__setattr__(self, "weights", check_weights("weights", self.backbone, self.weights))
            layers = DEFAULT_TAPS if self.layers is None else self.layers
            object.__setattr__(self, "layers", check_taps(backbone_spec(self.backbone), layers))

    name = "utad"
    image_size = IMAGE_SIZE
    stages = ("impression", "expert")
    default_steps = 60

    def __init__(self, **config):
        super().__init__(**config)
        c = self.settings
        self.ie = ImpressionExtractor(c.ie_size, c.ie_widths, c.latent_dim, c.ie_hidden, c.alpha, c.beta, c.gamma)
        self.expert = ExpertNet(c.expert_width, c.detail_dim, c.detail_width, c.mlp_hidden, c.n_residual,
                                c.lambda_detail)
        if c.backbone == "vgg19":
            self.perceptual = VGG19Features(c.vgg_weights, c.vgg_seed, load=self.read_weight_files)
        else:
            self.perceptual = ZooFeatures(model_backbone("utad", c.backbone, c.layers, c.weights, c.vgg_seed,
                                                         self.read_weight_files))
        layers = 3 if c.backbone == "vgg19" else len(c.layers)
        # layer_weights[t, l]: eq. 8 weight of term t (0: x vs x_hat, 1: h_tilde vs h) at layer l
        self.register_buffer("layer_weights", torch.ones(2, layers))
        self.register_buffer("pixel_threshold", torch.tensor(float("inf")))

    @torch.no_grad()
    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints written before the backbone zoo hold the VGG-19 as vgg.<name>; it is
        perceptual.<name> now. Eq. 9's threshold was saved as `threshold`; it is pixel_threshold
        now (a map value, distinct from the Scorer's image-verdict threshold)."""
        renamed = {f"perceptual.{key[len('vgg.'):]}" if key.startswith("vgg.") else key: value
                   for key, value in state.items()}
        if "threshold" in renamed and "pixel_threshold" not in renamed:
            renamed["pixel_threshold"] = renamed.pop("threshold")
        return renamed

    def segmentation_threshold(self) -> float:
        """Eq. 9's pixel threshold (pixel_threshold), as a float."""
        return float(self.pixel_threshold)

    # ---- training -------------------------------------------------------------------------------
    def configure_optimizer(self, stage: str, steps: int):
        if stage == "impression":
            return torch.optim.Adam(self.ie.parameters(), lr=self.config["ie_lr"]), None
        if stage == "expert":
            return torch.optim.Adam(self.expert.parameters(), lr=self.config["expert_lr"]), None
        raise ValueError(f"stage must be one of {self.stages}, got {stage!r}")

    def training_loss(self, stage: str, train_images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One batch of `batch_size` images drawn with `generator`: eq. 6 for "impression"; for
        "expert", the Expert-Net losses on (x, h) with h the frozen IE-Net's impression of x."""
        n = train_images.shape[0]
        if n < 2:
            raise ValueError(f"train_images must hold at least 2 images, got {n}")
        index = torch.randperm(n, generator=generator)[:self.config["batch_size"]].to(train_images.device)
        images = self._native(train_images.index_select(0, index))
        if stage == "impression":
            return self.ie.loss(resize_square(images, self.config["ie_size"]), generator)
        if stage == "expert":
            with torch.no_grad():
                impressions = self.impression(images)
            return self.expert.loss(images, impressions)
        raise ValueError(f"stage must be one of {self.stages}, got {stage!r}")

    # ---- inference ------------------------------------------------------------------------------
    def _native(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        return resize_square(images, self.image_size)

    def impression(self, images: torch.Tensor) -> torch.Tensor:
        """Native-size images [B, 3, 128, 128] -> IE-Net's impression h [B, 3, 128, 128] (computed at
        ie_size and resized back)."""
        return resize_square(self.ie.impression(resize_square(images, self.config["ie_size"])), self.image_size)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] -> {"impression" h, "reconstruction" x_hat, "naive_impression"
        h_tilde}, each [B, 3, 128, 128] (the images resized to the native size)."""
        x = self._native(images)
        h = self.impression(x)
        out = self.expert(x, h)
        return {"impression": h, "reconstruction": out.reconstruction, "naive_impression": out.naive_impression}

    @torch.no_grad()
    def layer_distances(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> unweighted eq. 8 terms [B, 2, L, H, W]: term 0 d_l(x, x_hat),
        term 1 d_l(h_tilde, h), for the L taps of the perceptual network."""
        x = self._native(images)
        parts = self.reconstruct(x)
        size = tuple(images.shape[-2:])
        image_term = layer_distances(self.perceptual(x), self.perceptual(parts["reconstruction"]), size)
        if self.config["naive_weight"] == 0:  # the term would be multiplied by 0: skip its two passes
            return torch.stack([image_term, torch.zeros_like(image_term)], 1)
        naive_term = layer_distances(self.perceptual(parts["naive_impression"]), self.perceptual(parts["impression"]),
                                     size)
        return torch.stack([image_term, naive_term], 1)

    def _combine(self, distances: torch.Tensor) -> torch.Tensor:
        weights = self.layer_weights.clone()
        weights[1] *= self.config["naive_weight"]
        return (distances * weights[None, :, :, None, None]).sum((1, 2))

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """images [B, 3, H, W] -> eq. 8 maps [B, H, W] (in chunks of batch_size)."""
        was_training = self.training
        self.eval()
        chunks = (images,) if torch.compiler.is_compiling() else images.split(batch_size)  # one graph for any batch
        maps = torch.cat([self._combine(self.layer_distances(chunk)) for chunk in chunks])
        self.train(was_training)
        return maps

    @torch.no_grad()
    def prepare_scoring(self, train_images: torch.Tensor) -> None:
        """Sets layer_weights (1 / mean normal distance per term and layer) and pixel_threshold from
        the first pixel_threshold_images training images."""
        images = train_images[:self.config["pixel_threshold_images"]]
        was_training = self.training
        self.eval()
        distances = torch.cat([self.layer_distances(chunk) for chunk in images.split(8)])
        self.train(was_training)
        mean = distances.mean((0, 3, 4))
        self.layer_weights.copy_(torch.where(mean > 0, 1.0 / mean.clamp_min(1e-12), torch.zeros_like(mean)))
        self._set_threshold(self._combine(distances), self.config["pixel_quantile"])

    def _set_threshold(self, maps: torch.Tensor, quantile: float) -> None:
        values = maps.flatten().float().cpu().sort().values
        self.pixel_threshold.fill_(float(values[min(int(quantile * values.numel()), values.numel() - 1)]))

    @torch.no_grad()
    def calibrate_pixel_threshold(self, normal_images: torch.Tensor, quantile: float) -> float:
        """pixel_threshold := the `quantile` quantile of the maps of normal_images [N, 3, H, W] (e.g.
        held-out normal images); returns it."""
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self._set_threshold(self.anomaly_maps(normal_images), quantile)
        return float(self.pixel_threshold)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> AnomalyResult:
        """images [B, 3, H, W] in [0, 1] -> AnomalyResult(image_scores [B] by image_score, maps [B, H, W])."""
        maps = self.anomaly_maps(images)
        return AnomalyResult(image_scores=self.image_scores(maps), maps=maps)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 9: images [B, 3, H, W] -> bool anomaly segmentation [B, H, W] at `pixel_threshold`."""
        return segment(self.anomaly_maps(images), self.pixel_threshold)
