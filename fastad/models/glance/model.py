"""GlanceNet (Wang et al., "Glancing at the Patch: Anomaly Localization with Global and Local
Feature Comparison"): a Local-Net embeds a patch, a Global-Net of partial convolutions embeds
the image around it without seeing it; an IAD head (feature distance, eq. 11) and a DAD head
(a classifier of normal vs stained patches given the context, eq. 12) score each patch (eq. 13),
and an inverse-distance-weighted interpolation of the raster patch scores gives the map.

    model = GlanceNet()                               # Local-Net distilled from pretrained efficientnet_lite0
    model = GlanceNet(teacher="resnet18", teacher_weights="resnet18.pth")   # the paper's teacher, a local file
    model = GlanceNet(teacher="none")                 # self-supervised Local-Net, no teacher
    fastad.engine.train(model, train_images)          # [N, 3, 128, 128]; stages "local", "global"
    result = model.score(test_images)                 # AnomalyResult(image_scores [B], maps [B, H, W])
    result = model.score(test_images, lambda_s=0.4)   # another λs of eq. 13, same trained model

The design decisions where the paper is vague, and the measurements behind the defaults, are in
fastad/models/glance/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastad.checks import check_bool, check_choice, check_int, check_ints, check_optional_path, check_real
from fastad.models.base import AnomalyModel, AnomalyResult, ModelConfig
from fastad.models.components.backbones import load_resnet18_teacher
from fastad.models.components.zoo import BACKBONES, PRETRAINED, RANDOM, check_weights, lite_names, model_backbone
from fastad.models.components.patches import channel_statistics, crop_patches, standardize
from fastad.models.glance.boxes import hole_masks
from fastad.models.glance.losses import compactness_loss, dad_loss, iad_score, info_nce
from fastad.models.glance.networks import DADHead, GlobalNet, LocalNet, PooledTaps
from fastad.models.glance.stains import add_stain
from fastad.models.registry import register_model
from fastad.ops.upsample import PatchGrid, gaussian_blur, idw_upsample

#: how patch_scores runs Global-Net over the patches of an image (the `inference` config values)
INFERENCE_MODES = ("shared", "copies")
#: the `stains` config values
STAIN_KINDS = ("gray", "varied")
#: patch boxes per forward_shared call: 256 keeps one 128-px image at stride 8 per pass; passes of
#: several images measured slower on the CPU (their boxes' features fall out of cache)
SHARED_BOXES_PER_PASS = 256

#: the `teacher` config values: the EfficientNet-Lite zoo entries (the first the default), the
#: paper's ResNet-18 (a local torchvision file), or none (self-supervised Local-Net)
TEACHERS = (*lite_names(), "resnet18", "none")
#: the zoo taps whose patch means form R(p) with a zoo teacher: a 32 px patch gives 4 x 4 and
#: 2 x 2 maps, the finest stages that still summarise the whole patch as Local-Net does
TEACHER_TAPS = ("stride8", "stride16")
#: the width of the resnet18 teacher's feature R(p) (its layer4)
RESNET18_DIM = 512


def teacher_dim(teacher: str) -> int:
    """The width of R(p) for a `teacher` config value other than "none"."""
    if teacher == "resnet18":
        return RESNET18_DIM
    return sum(BACKBONES[teacher].taps[t][1] for t in TEACHER_TAPS)


@register_model
class GlanceNet(AnomalyModel):
    """Local-Net, Global-Net, IAD and DAD heads, their two training stages and patch scoring.

    Config (GlanceNet.Config):
        in_channels: image channels C (3 with a teacher).
        patch_size: K, the patch side (a multiple of 8; at most 2 * 2**len(global_widths) so that
            Global-Net's hole closes).
        stride: the raster stride of the scored patches (overlap K - stride).
        feature_dim: Z, the dimension n of Z_l and Z_g.
        global_widths: Global-Net's conv widths, one pooling stage each.
        lr: Adam's learning rate in both stages.
        local_batch: places (view pairs) per Local-Net step (>= 2).
        global_batch: patches (each with its own masked copy of the image) per Global-Net step.
        view_shift: the largest shift, per axis in pixels, between the two views of a place.
        temperature: InfoNCE temperature (> 0).
        lambda_c: λc of eq. 3, the compactness loss weight.
        lambda_t: λt of eq. 10.
        lambda_s: λs of eq. 13, in [0, 1] (default 0, the DAD head alone; the paper's is 0.8);
            score(lambda_s=...) overrides it.
        idw_power: the distance exponent of the IDW score map.
        score_batch: masked copies per Global-Net forward pass when scoring with inference="copies".
        inference: one of INFERENCE_MODES: "shared" (one pass per image plus per-patch boxes) or
            "copies" (P masked copies of the image); the same scores up to float rounding.
        teacher: one of TEACHERS, the network Local-Net is distilled from (eq. 1):
            "efficientnet_lite0" (the default; or lite1, lite2), R(p) = the means over the patch
            of its TEACHER_TAPS maps; "resnet18" (the paper's), R(p) = its 512-d average-pooled
            layer4; "none": the self-supervised Local-Net. A config naming teacher_weights (None
            or a path) but no teacher (every config saved before the zoo) means "none" / "resnet18".
        teacher_weights: for a zoo teacher "pretrained" (the default: its packaged ImageNet
            weights), "random" (its initialisation from seed 0, with a UserWarning: the
            comparison run) or a local file; for "resnet18" the path of a local torchvision
            resnet18 state_dict (.pth or .safetensors); None with "none". Only training reads
            it: a model built with read_weight_files=False reads it when a "local" training step
            first needs the teacher.
        lambda_k: λk of eq. 3 (weights the distillation loss, or InfoNCE without a teacher).
        view_jitter: brightness/contrast jitter of the second InfoNCE view (>= 0; contrast ±j/2,
            brightness ±j/4).
        stains: one of STAIN_KINDS: "varied" (ellipses and lines, gray or coloured) or "gray"
            (gray ellipses).
        dad_negatives: stained copies per DAD training sample besides its clean patch (0: eq. 8's
            one patch, clean or stained with probability 1/2).
        ssl_stains: a stained copy of each place as an extra InfoNCE negative.
        blur_sigma: σ in pixels of the Gaussian blur of the final map (>= 0; 0: none).
    """

    @dataclass(frozen=True)
    class Config(ModelConfig):
        in_channels: int = 3
        patch_size: int = 32
        stride: int = 8
        feature_dim: int = 64
        global_widths: tuple[int, ...] = (16, 32, 64, 64)
        lr: float = 1e-3
        local_batch: int = 32
        global_batch: int = 8
        view_shift: int = 8
        temperature: float = 0.2
        lambda_c: float = 1e-3
        lambda_t: float = 1.0
        lambda_s: float = 0.0
        idw_power: float = 2.0
        score_batch: int = 64
        inference: str = "shared"
        teacher: str = TEACHERS[0]
        teacher_weights: str | None = PRETRAINED
        lambda_k: float = 1.0
        view_jitter: float = 0.0
        stains: str = "varied"
        dad_negatives: int = 4
        ssl_stains: bool = True
        blur_sigma: float = 4.0

        def __post_init__(self):
            for key in ("in_channels", "feature_dim", "stride", "global_batch", "score_batch"):
                check_int(key, getattr(self, key), 1)
            check_int("local_batch", self.local_batch, 2)
            check_int("view_shift", self.view_shift, 0)
            check_int("dad_negatives", self.dad_negatives, 0)
            object.__setattr__(self, "global_widths", check_ints("global_widths", self.global_widths, 1))
            check_int("patch_size", self.patch_size, 8)
            closes = 2 * 2 ** len(self.global_widths)
            if self.patch_size > closes:
                raise ValueError(f"patch_size must be at most {closes} for global_widths of {len(self.global_widths)} "
                                 f"stages (the hole must close), got {self.patch_size}")
            for key in ("lr", "temperature"):
                check_real(key, getattr(self, key), 0.0, strict=True)
            for key in ("lambda_c", "lambda_t", "lambda_k", "view_jitter", "blur_sigma"):
                check_real(key, getattr(self, key), 0.0)
            check_real("lambda_s", self.lambda_s, 0.0, high=1.0)
            check_real("idw_power", self.idw_power)
            check_choice("inference", self.inference, INFERENCE_MODES)
            check_choice("stains", self.stains, STAIN_KINDS)
            check_bool("ssl_stains", self.ssl_stains)
            object.__setattr__(self, "teacher_weights", self._checked_teacher_weights())
            if self.teacher != "none" and self.in_channels != 3:
                raise ValueError(f"in_channels must be 3 to distil from a {self.teacher} teacher, got {self.in_channels}")

        @classmethod
        def from_dict(cls, values: dict, model: str) -> "GlanceNet.Config":
            """ModelConfig.from_dict, where teacher_weights None or a path without a teacher (a
            config saved before the backbone zoo) means teacher "none" or "resnet18"."""
            weights = values.get("teacher_weights", PRETRAINED)
            if "teacher" not in values and weights not in (PRETRAINED, RANDOM):
                values = {**values, "teacher": "none" if weights is None else "resnet18"}
            return super().from_dict(values, model)

        def _checked_teacher_weights(self) -> str | None:
            check_choice("teacher", self.teacher, TEACHERS)
            weights = check_optional_path("teacher_weights", self.teacher_weights)
            if self.teacher == "none":
                if weights not in (None, PRETRAINED):
                    raise ValueError(f"teacher_weights: teacher 'none' reads no weights, got {weights!r}")
                return None
            if self.teacher == "resnet18" and weights in (None, PRETRAINED, RANDOM):
                raise ValueError(f"teacher_weights must be the path of a local torchvision resnet18 file for teacher "
                                 f"'resnet18', got {weights!r}")
            if weights is None:
                raise ValueError(f"teacher_weights must be {PRETRAINED!r}, {RANDOM!r} or a file path for teacher "
                                 f"{self.teacher!r}, got None")
            return weights if self.teacher == "resnet18" else check_weights("teacher_weights", self.teacher, weights)

    name = "glance"
    image_size = 128
    stages = ("local", "global")
    default_steps = 400

    def __init__(self, **config):
        super().__init__(**config)
        c = self.settings
        self.patch_size = c.patch_size
        self.local_net = LocalNet(c.in_channels, c.patch_size, c.feature_dim)
        self.global_net = GlobalNet(c.in_channels, c.global_widths, c.feature_dim)
        self.dad_head = DADHead(c.feature_dim)
        # the teacher is only needed to train: kept in a tuple so it is no submodule (not in the
        # checkpoint, not moved by .to()), read from teacher_weights now or when first needed
        self._teacher: tuple[nn.Module, ...] = ()
        if c.teacher != "none":
            if self.read_weight_files:
                self._teacher = (self._read_teacher(),)
            self.decoder = nn.Linear(c.feature_dim, teacher_dim(c.teacher))
        self.register_buffer("pixel_mean", torch.zeros(c.in_channels))
        self.register_buffer("pixel_std", torch.ones(c.in_channels))

    def teacher(self) -> nn.Module:
        """The frozen teacher (patches [N, 3, K, K] in [0, 1] -> R(p) [N, teacher_dim]), read
        from teacher_weights on first use; ValueError with teacher "none"."""
        if self.config["teacher"] == "none":
            raise ValueError("teacher is 'none': this GlanceNet trains its Local-Net without a teacher")
        if not self._teacher:
            self._teacher = (self._read_teacher(),)
        return self._teacher[0]

    def _read_teacher(self) -> nn.Module:
        c = self.settings
        if c.teacher == "resnet18":
            return load_resnet18_teacher(c.teacher_weights)
        return PooledTaps(model_backbone("glance", c.teacher, TEACHER_TAPS, c.teacher_weights, 0, read=True))

    # --- features ---------------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] in [0, 1] -> per-channel standardised pixels (statistics of the train set)."""
        return standardize(images, self.pixel_mean, self.pixel_std)

    def local_features(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [N, C, K, K] in [0, 1] -> Z_l [N, Z] (eq. 4)."""
        return self.local_net(self.normalize(patches))

    def global_features(self, images: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] in [0, 1], hole [N, 1, H, W] (1 on the patch) -> Z_g [N, Z] (eq. 6)."""
        return self.global_net(self.normalize(images), hole)

    def _masked_copies(self, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W], holes [n, 1, H, W] -> Z_g [B, n, Z] of every image with every hole."""
        (b, c, h, w), n = images.shape, holes.shape[0]
        copies = images[:, None].expand(b, n, c, h, w).reshape(b * n, c, h, w)
        return self.global_features(copies, holes[None].expand(b, n, 1, h, w).reshape(b * n, 1, h, w)).view(b, n, -1)

    # --- training ---------------------------------------------------------------------------

    def setup(self, train_images: torch.Tensor) -> None:
        with torch.no_grad():
            mean, std = channel_statistics(train_images)
            self.pixel_mean.copy_(mean)
            self.pixel_std.copy_(std)

    def configure_optimizer(self, stage: str, steps: int):
        if stage == "local":
            params = list(self.local_net.parameters())
            if self.config["teacher"] != "none":
                params += list(self.decoder.parameters())
        elif stage == "global":
            params = list(self.global_net.parameters()) + list(self.dad_head.parameters())
        else:
            raise ValueError(f"stage must be one of {self.stages}, got {stage!r}")
        return torch.optim.Adam(params, lr=self.config["lr"]), None

    def training_loss(self, stage: str, train_images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if stage == "local":
            return self.local_loss(train_images, generator)
        if stage == "global":
            return self.global_loss(train_images, generator)
        raise ValueError(f"stage must be one of {self.stages}, got {stage!r}")

    def local_loss(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One Local-Net batch from images [N, C, H, W]: the distillation loss if there is a
        teacher, else {"total": λk InfoNCE + λc l_c, "ssl", "compact"}."""
        if self.config["teacher"] != "none":
            return self.distillation_loss(images, generator)
        n, _, h, w = images.shape
        k, shift, b = self.patch_size, self.config["view_shift"], self.config["local_batch"]
        if h < k + 2 * shift or w < k + 2 * shift:
            raise ValueError(f"images of {h}x{w} are too small for {k}x{k} views shifted by {shift}")
        idx = torch.randint(n, (b,), generator=generator)
        rows = torch.randint(shift, h - k - shift + 1, (b,), generator=generator)
        cols = torch.randint(shift, w - k - shift + 1, (b,), generator=generator)
        offset = torch.randint(-shift, shift + 1, (2, b), generator=generator)
        jitter = (torch.rand(2, b, 1, 1, 1, generator=generator) - 0.5).to(images.device)
        first = crop_patches(images, idx, rows, cols, k)
        second = crop_patches(images, idx, rows + offset[0], cols + offset[1], k)
        j = self.config["view_jitter"]
        second = second * (1 + j * jitter[0]) + 0.5 * j * jitter[1]          # contrast ±j/2, brightness ±j/4
        if self.config["ssl_stains"]:
            stained = add_stain(second, generator, varied=self.config["stains"] == "varied")
            z = self.local_features(torch.cat([first, second, stained]))
            ssl = info_nce(z[:b], z[b:2 * b], self.config["temperature"], z[2 * b:])
        else:
            z = self.local_features(torch.cat([first, second]))
            ssl = info_nce(z[:b], z[b:], self.config["temperature"])
        compact = compactness_loss(z[:b])
        return {"total": self.config["lambda_k"] * ssl + self.config["lambda_c"] * compact, "ssl": ssl,
                "compact": compact}

    def _random_patches(self, images: torch.Tensor, generator: torch.Generator, count: int):
        """count patches at uniformly random places of random images [N, C, H, W] -> (patches
        [count, C, K, K], image index, top rows, left cols [count] each, on the CPU)."""
        n, _, h, w = images.shape
        k = self.patch_size
        idx = torch.randint(n, (count,), generator=generator)
        rows = torch.randint(h - k + 1, (count,), generator=generator)
        cols = torch.randint(w - k + 1, (count,), generator=generator)
        return crop_patches(images, idx, rows, cols, k), idx, rows, cols

    def distillation_loss(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One distillation batch of local_batch random patches of images [N, C, H, W] (eq. 3):
        {"total": λk l_k + λc l_c, "distill": l_k (eq. 1, mean over the teacher's dims), "compact"}."""
        patches = self._random_patches(images, generator, self.config["local_batch"])[0]
        teacher = self.teacher().to(images.device)
        with torch.no_grad():
            target = teacher(patches)
        z = self.local_features(patches)
        distill = (self.decoder(z) - target).pow(2).mean(1).mean()
        compact = compactness_loss(z)
        return {"total": self.config["lambda_k"] * distill + self.config["lambda_c"] * compact, "distill": distill,
                "compact": compact}

    def global_loss(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One Global-Net + DAD batch from images [N, C, H, W] (eq. 10):
        {"total": l_IAD + λt l_DAD, "iad", "dad"}. Local-Net is frozen (eval mode, no gradient)."""
        h, w = images.shape[-2:]
        k, b = self.patch_size, self.config["global_batch"]
        patches, idx, rows, cols = self._random_patches(images, generator, b)
        varied = self.config["stains"] == "varied"
        m = self.config["dad_negatives"]
        self.local_net.eval()
        z_global = self.global_features(images[idx.to(images.device)], hole_masks(rows, cols, k, (h, w), images.device))
        if m == 0:
            stained = add_stain(patches, generator, varied=varied)
            normal = (torch.rand(b, generator=generator) < 0.5).to(images.device)
            with torch.no_grad():
                z_local, z_stained = self.local_features(torch.cat([patches, stained])).split(b)
            z_star = torch.where(normal[:, None], z_local, z_stained)
            dad = dad_loss(self.dad_head.logits(z_star, z_global), normal)
        else:
            stained = add_stain(patches.repeat(m, 1, 1, 1), generator, varied=varied)
            with torch.no_grad():
                z_all = self.local_features(torch.cat([patches, stained]))
            z_local = z_all[:b]
            logits = self.dad_head.logits(z_all, z_global.repeat(m + 1, 1))
            normal = torch.zeros(b * (m + 1), device=images.device, dtype=torch.bool)
            normal[:b] = True
            dad = 0.5 * (dad_loss(logits[:b], normal[:b]) + dad_loss(logits[b:], normal[b:]))
        iad = iad_score(z_local, z_global).mean()
        return {"total": iad + self.config["lambda_t"] * dad, "iad": iad, "dad": dad}

    # --- scoring ----------------------------------------------------------------------------

    def grid(self, height: int, width: int) -> PatchGrid:
        """The raster PatchGrid of the scored patches on an image of height x width."""
        return PatchGrid(self.patch_size, self.config["stride"], (height, width))

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, C, H, W] in [0, 1] -> (s_IAD, s_DAD), each [B, P] over grid(H, W) in raster
        order (eqs. 11, 12). Global-Net runs per image as the config's `inference` says; under
        torch.compile / torch.export tracing it runs the masked copies of all images at once
        (the shared path plans its boxes from host values), the same scores up to float rounding."""
        b, c, h, w = images.shape
        grid = self.grid(h, w)
        k, chunk = self.patch_size, self.config["score_batch"]
        corners = (grid.centres(torch.float32) - (k - 1) / 2).round().long()          # [P, 2] top-left
        patches = F.unfold(images, k, stride=grid.stride).transpose(1, 2).reshape(-1, c, k, k)  # [B * P, C, K, K]
        z_local = self.local_features(patches)
        tracing = torch.compiler.is_compiling()
        if self.config["inference"] == "shared" and not tracing:
            images_per_pass = max(1, SHARED_BOXES_PER_PASS // grid.num_patches)
            z_global = torch.cat([self.global_net.forward_shared(self.normalize(part), corners, k).flatten(0, 1)
                                  for part in images.split(images_per_pass)])
        else:
            holes = hole_masks(corners[:, 0], corners[:, 1], k, (h, w), images.device)  # [P, 1, H, W]
            if tracing:   # one graph for any batch: every image with each chunk of holes per pass
                z_global = torch.cat([self._masked_copies(images, hole) for hole in holes.split(chunk)], 1).flatten(0, 1)
            else:
                z_global = torch.cat([self.global_features(image.expand(len(hole), -1, -1, -1), hole)
                                      for image in images for hole in holes.split(chunk)])
        iad = iad_score(z_local, z_global).view(b, -1)
        dad = 1.0 - self.dad_head(z_local, z_global).view(b, -1)
        return iad, dad

    def combine(self, s_iad: torch.Tensor, s_dad: torch.Tensor, image_size: tuple[int, int],
                lambda_s: float | None = None) -> AnomalyResult:
        """Eq. 13 and the IDW map: s_iad, s_dad [B, P] -> AnomalyResult(image_scores [B] by image_score,
        maps [B, H, W]) with s = λs s_IAD + (1 - λs) s_DAD (λs default: the config's)."""
        lambda_s = self.config["lambda_s"] if lambda_s is None else lambda_s
        if not 0.0 <= lambda_s <= 1.0:
            raise ValueError(f"lambda_s must be in [0, 1], got {lambda_s}")
        scores = lambda_s * s_iad + (1.0 - lambda_s) * s_dad
        maps = idw_upsample(scores.float().contiguous(), self.grid(*image_size), power=self.config["idw_power"])
        if self.config["blur_sigma"] > 0:
            maps = gaussian_blur(maps[:, None], self.config["blur_sigma"])[:, 0]
        return AnomalyResult(self.image_scores(maps), maps)

    @torch.no_grad()
    def score(self, images: torch.Tensor, lambda_s: float | None = None) -> AnomalyResult:
        """images [B, C, H, W] in [0, 1] (H, W multiples of Global-Net's stride, >= patch_size; H = W
        with inference="shared") ->
        AnomalyResult(image_scores [B], maps [B, H, W]); lambda_s overrides the config's λs."""
        if images.dim() != 4 or images.shape[1] != self.config["in_channels"]:
            raise ValueError(f"images must be [B, {self.config['in_channels']}, H, W], got {tuple(images.shape)}")
        s_iad, s_dad = self.patch_scores(images)
        return self.combine(s_iad, s_dad, tuple(images.shape[-2:]), lambda_s)
