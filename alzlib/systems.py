"""The other published systems (issue 18): one registry of extra architectures, their recipes and how we differ.

Keras 3 API only (keras.ops, keras.layers, keras.random), so every system runs on TensorFlow, JAX or PyTorch.
Every system takes what the transfer models take, (image_size, image_size, 3) float RGB 0-255 (grey repeated), and
normalises inside the model, so one data pipeline (the pass-through 'efficientnet' family) feeds them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Keras at module level, as in alzlib.models: importing this module must register the custom layers before a saved
# system is loaded.
import keras
from keras import layers

from alzlib import config, models
from alzlib.preprocessing import CAFFE_MEANS_BGR

# Every system normalises inside the model, so its data pipeline passes 0-255 through unchanged.
PREPROCESSING_FAMILY = "efficientnet"
ALEXNET_FILTERS = (64, 192, 384, 256, 256)  # torchvision's AlexNet widths (Krizhevsky 2014's one-GPU variant)
ALEXNET_KERNELS = (11, 5, 3, 3, 3)
ALEXNET_DENSE_WIDTH = 4096
# Below the original's 224 px the two 4096-wide dense layers hold most of the parameters and most of the CPU time
# for a 2x2 feature map: a quarter of the width keeps the shape of the head at a sixteenth of its weights.
ALEXNET_SMALL_DENSE_DIVISOR = 4
CONVNEXT_DEPTHS = (2, 2, 4, 2)
CONVNEXT_WIDTHS = (32, 64, 128, 256)
CONVNEXT_DROP_PATH = 0.1
CONVNEXT_LAYER_SCALE = 1e-6
VIT_DEPTH, VIT_DIM, VIT_HEADS, VIT_MLP_RATIO = 4, 128, 4, 4
VIT_TOKENS_PER_SIDE = 8  # patch size = image_size / 8: patch 8 at 64 px, 16 at 128 px (64 tokens either way)
# The grid KerasTuner searches for the ViT (alzlib.search), scored on validation subjects only.
VIT_SEARCH_SPACE = {"learning_rate": (1e-5, 5e-5, 1e-4), "gradient_accumulation_steps": (1, 2, 4),
                    "weight_decay": (0.005, 0.01, 0.05, 0.1)}
OUR_SPLIT = ("a subject-level train/val/test split (no subject in two splits; alzlib.splits) instead of the "
             "original's image-level random split, which puts slices of one scan on both sides and inflates scores")
NO_HUB = "no model hub offline: ImageNet weights only from Keras' cache or a file the user names (WEIGHTS)"
PROFILE_EPOCHS = "the profile's epoch budget (smoke/cpu/full) instead of the original's epoch count"


# ----------------------------------------------------------------------------------------------- custom layers


@keras.saving.register_keras_serializable(package="alzlib")
class LayerScale(layers.Layer):
    """Multiply the features by a learned per-channel scale that starts small (ConvNeXt, CaiT)."""

    def __init__(self, init_value: float = CONVNEXT_LAYER_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma",
                                     initializer=keras.initializers.Constant(self.init_value))

    def call(self, inputs):
        return inputs * keras.ops.cast(self.gamma, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="alzlib")
class DropPath(layers.Layer):
    """Stochastic depth: in training, drop a residual branch per sample with probability `rate` (mean kept)."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must lie in [0, 1), got {rate!r}.")
        self.rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (keras.ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        mask = keras.ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype))
        return inputs * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="alzlib")
class ClassTokenPosition(layers.Layer):
    """Prepend a learned class token to the patch tokens and add learned position embeddings (ViT)."""

    def build(self, input_shape):
        tokens, dim = input_shape[1], input_shape[2]
        self.class_token = self.add_weight(shape=(1, 1, dim), name="class_token", initializer="zeros")
        self.positions = self.add_weight(shape=(1, tokens + 1, dim), name="positions",
                                         initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, inputs):
        batch = keras.ops.shape(inputs)[0]
        token = keras.ops.broadcast_to(keras.ops.cast(self.class_token, inputs.dtype), (batch, 1, inputs.shape[-1]))
        return keras.ops.concatenate([token, inputs], axis=1) + keras.ops.cast(self.positions, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])


@keras.saving.register_keras_serializable(package="alzlib")
class ClassTokenSlice(layers.Layer):
    """Return the first token of each sequence (the ViT's class token); a layer, since safe mode refuses Lambda."""

    def call(self, inputs):
        return inputs[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


# ----------------------------------------------------------------------------------------------- builders


def _image_input(image_size: int):
    """Return the systems' input: (image_size, image_size, 3) float RGB 0-255."""
    return keras.Input((image_size, image_size, 3), name="image")


def _half_range(inputs):
    """Return the images mapped from 0-255 to -1..1 (mean 0.5, std 0.5 on the 0-1 scale)."""
    return layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inputs)


def _predictions(features, num_classes: int):
    """Return the float32 softmax output layer (a float16 softmax loses small probabilities)."""
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(features)


def alexnet_dense_width(image_size: int) -> int:
    """Return the width of AlexNet's two hidden dense layers: 4096 at 224 px and above, a quarter below."""
    return ALEXNET_DENSE_WIDTH if image_size >= 224 else ALEXNET_DENSE_WIDTH // ALEXNET_SMALL_DENSE_DIVISOR


def build_alexnet(num_classes: int, image_size: int, weights: str | None = None):
    """Return (model, info): five conv-BN-ReLU-pool blocks (kernels 11, 5, 3, 3, 3) and a 2-layer dropout head."""
    inputs = _image_input(image_size)
    x = _half_range(inputs)
    for block, (filters, kernel) in enumerate(zip(ALEXNET_FILTERS, ALEXNET_KERNELS), start=1):
        # Stride 1 and 'same' padding, unlike the original's stride-4 first layer: five 2x poolings already take
        # 64 px to 2 x 2, and a stride of 4 on top would leave nothing to pool.
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = layers.BatchNormalization(name=f"bn{block}")(x)
        x = layers.ReLU(name=f"relu{block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    width = alexnet_dense_width(image_size)
    for index in (1, 2):
        x = layers.Dropout(0.5, name=f"dropout{index}")(x)
        x = layers.Dense(width, activation="relu", name=f"dense{index}")(x)
    model = keras.Model(inputs, _predictions(x, num_classes), name="alexnet")
    return model, {"weights": "random (trained from scratch, as the original)", "pretrained": False,
                   "gradcam_layer": "conv5", "dense_width": width}


def _convnext_block(x, width: int, drop_rate: float, name: str):
    """Return x + DropPath(LayerScale(MLP(LayerNorm(depthwise 7x7 conv(x)))))."""
    branch = layers.DepthwiseConv2D(7, padding="same", name=f"{name}_depthwise")(x)
    branch = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm")(branch)
    branch = layers.Dense(4 * width, name=f"{name}_expand")(branch)
    branch = layers.Activation("gelu", name=f"{name}_gelu")(branch)
    branch = layers.Dense(width, name=f"{name}_project")(branch)
    branch = LayerScale(CONVNEXT_LAYER_SCALE, name=f"{name}_layer_scale")(branch)
    branch = DropPath(drop_rate, name=f"{name}_drop_path")(branch)
    return layers.Add(name=f"{name}_add")([x, branch])


def build_convnext(num_classes: int, image_size: int, weights: str | None = None,
                   depths: tuple[int, ...] = CONVNEXT_DEPTHS, widths: tuple[int, ...] = CONVNEXT_WIDTHS):
    """Return (model, info): a small ConvNeXt (patchify stem, four stages, LayerNorm downsampling) from scratch."""
    if len(depths) != len(widths):
        raise ValueError(f"ConvNeXt needs one width per stage: depths {depths}, widths {widths}.")
    inputs = _image_input(image_size)
    x = layers.Conv2D(widths[0], 4, strides=4, name="stem")(_half_range(inputs))
    x = layers.LayerNormalization(epsilon=1e-6, name="stem_norm")(x)
    # Stochastic depth rises linearly from 0 in the first block to CONVNEXT_DROP_PATH in the last (Liu et al.).
    rates = [CONVNEXT_DROP_PATH * index / max(1, sum(depths) - 1) for index in range(sum(depths))]
    block = 0
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        if stage:
            x = layers.LayerNormalization(epsilon=1e-6, name=f"downsample{stage}_norm")(x)
            x = layers.Conv2D(width, 2, strides=2, name=f"downsample{stage}")(x)
        for index in range(depth):
            x = _convnext_block(x, width, rates[block], f"stage{stage + 1}_block{index + 1}")
            block += 1
    last_stage = f"stage{len(depths)}_block{depths[-1]}_add"
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="head_norm")(x)
    model = keras.Model(inputs, _predictions(x, num_classes), name="convnext_scratch")
    return model, {"weights": "random (trained from scratch)", "pretrained": False, "gradcam_layer": last_stage,
                   "depths": list(depths), "widths": list(widths)}


def build_resnet50_frozen(num_classes: int, image_size: int, weights: str | None = "imagenet"):
    """Return (model, info): ResNet50 frozen whole (trained whole when random), pooled, Dense 512 ReLU, softmax."""
    backbone, source, pretrained = models.load_backbone("resnet50", image_size, weights)
    # Freezing random layers would only fix noise: without ImageNet weights every layer trains, as in alzlib.models.
    backbone.trainable = not pretrained
    inputs = _image_input(image_size)
    # Keras' caffe preprocessing (RGB to BGR, ImageNet means subtracted) as a layer: the channels are grey repeated,
    # so the BGR swap is a no-op and subtracting the means in BGR order is exactly preprocess_input.
    x = layers.Normalization(mean=list(CAFFE_MEANS_BGR), variance=[1.0, 1.0, 1.0], name="caffe_means")(inputs)
    # training=False keeps the frozen backbone's batch norms in inference mode (Keras' fine-tuning guide).
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dense(512, activation="relu", name="dense_512")(x)
    model = keras.Model(inputs, _predictions(x, num_classes), name="resnet50_frozen")
    return model, {"weights": source, "pretrained": pretrained, "gradcam_layer": backbone.name,
                   "backbone": backbone.name, "backbone_frozen": pretrained}


def vit_patch_size(image_size: int) -> int:
    """Return the ViT patch size, image_size / 8 (8 x 8 tokens); ValueError when 8 does not divide it."""
    if image_size % VIT_TOKENS_PER_SIDE:
        raise ValueError(f"The ViT needs an image size divisible by {VIT_TOKENS_PER_SIDE}, got {image_size}.")
    return image_size // VIT_TOKENS_PER_SIDE


def _transformer_block(x, dim: int, heads: int, name: str):
    """Return one pre-norm transformer encoder block: x + MHSA(LN(x)), then + MLP(LN(.))."""
    attended = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
    attended = layers.MultiHeadAttention(heads, dim // heads, name=f"{name}_attention")(attended, attended)
    x = layers.Add(name=f"{name}_add1")([x, attended])
    mlp = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
    mlp = layers.Dense(VIT_MLP_RATIO * dim, activation="gelu", name=f"{name}_mlp1")(mlp)
    mlp = layers.Dense(dim, name=f"{name}_mlp2")(mlp)
    return layers.Add(name=f"{name}_add2")([x, mlp])


def build_vit(num_classes: int, image_size: int, weights: str | None = None, depth: int = VIT_DEPTH,
              dim: int = VIT_DIM, heads: int = VIT_HEADS):
    """Return (model, info): a ViT (patches, class token, pre-norm encoder); weights from a named file, else random."""
    if dim % heads:
        raise ValueError(f"The ViT's dim must divide into its heads: dim {dim}, heads {heads}.")
    patch = vit_patch_size(image_size)
    inputs = _image_input(image_size)
    x = layers.Conv2D(dim, patch, strides=patch, name="patch_embedding")(_half_range(inputs))
    x = layers.Reshape((VIT_TOKENS_PER_SIDE**2, dim), name="tokens")(x)
    x = ClassTokenPosition(name="class_token_position")(x)
    for index in range(depth):
        x = _transformer_block(x, dim, heads, f"encoder{index + 1}")
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    x = ClassTokenSlice(name="class_token")(x)
    model = keras.Model(inputs, _predictions(x, num_classes), name="vit")
    source = "random (trained from scratch: no pretrained ViT file named)"
    if weights not in (None, "none", "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ViT weights file {path} does not exist: name a .weights.h5 saved from this ViT.")
        model.load_weights(path)
        source = f"pretrained: {path}"
    return model, {"weights": source, "pretrained": source.startswith("pretrained"), "gradcam_layer": None,
                   "patch_size": patch, "depth": depth, "dim": dim, "heads": heads}


# ----------------------------------------------------------------------------------------------- recipes

_BLACK_FILL = {"fill_mode": "constant", "fill_value": 0.0}  # MRI background is black (see preprocessing.py)
ALEXNET_AUGMENTATION = [
    {"group": [{"layer": "RandomTranslation", "height_factor": 0.05, "width_factor": 0.05, **_BLACK_FILL},
               {"layer": "RandomZoom", "height_factor": 0.05, **_BLACK_FILL},
               {"layer": "RandomRotation", "factor": 15 / 360, **_BLACK_FILL}],
     "probability": 0.2},
]
CONVNEXT_AUGMENTATION = [
    # Keras has no RandomResizedCrop (RandomCrop shrinks the output): zooming in by up to 10% of the side keeps the
    # size and shows 81-100% of the image's area, the original's 80-100% crop.
    {"layer": "RandomZoom", "height_factor": [-0.1, 0.0], **_BLACK_FILL},
    {"layer": "RandomFlip", "mode": "horizontal"},
    # RandomFlip flips half of what it sees, so applying it to 40% of the images flips 20% of them.
    {"group": [{"layer": "RandomFlip", "mode": "vertical"}], "probability": 0.4},
    {"layer": "RandomRotation", "factor": 15 / 360, **_BLACK_FILL},
    {"layer": "RandomTranslation", "height_factor": 0.05, "width_factor": 0.05, **_BLACK_FILL},
    {"group": [{"layer": "RandomGaussianBlur", "factor": 1.0, "kernel_size": 3, "sigma": [0.1, 1.0],
                "value_range": [0, 255]}], "probability": 0.2},
    {"layer": "GaussianPixelNoise", "stddev": 5.0},  # about 2% of the 0-255 range (alzlib.augmentation)
    # factor (0.25, 0.25): RandomErasing samples its probability between the two, so each image is erased at 0.25;
    # black fill, as the background, rather than noise that no scan contains.
    {"layer": "RandomErasing", "factor": [0.25, 0.25], "fill_value": 0.0, "value_range": [0, 255]},
]
RESNET50_FROZEN_AUGMENTATION = [
    {"layer": "RandomFlip", "mode": "horizontal"},
    {"layer": "RandomRotation", "factor": 15 / 360, **_BLACK_FILL},
]
VIT_AUGMENTATION = RESNET50_FROZEN_AUGMENTATION
WARMUP_COSINE = "linear warm-up then cosine decay (per epoch, training.learning_rate_at)"
RECIPES = {
    "alexnet": {
        "optimizer": {"name": "SGD", "learning_rate": 5e-4, "momentum": 0.9, "weight_decay": 1e-4},
        "loss": {"name": "categorical_crossentropy", "label_smoothing": 0.0},
        "learning_rate_schedule": {"name": "constant"},
        "batch_size": 128, "original_epochs": 100, "normalisation": "grey 0-1, mean 0.5, std 0.5 (in the model)",
        "augmentation": ALEXNET_AUGMENTATION, "mixing": None, "weight_averaging": None,
        "metrics": ["accuracy", "macro_f1"],
    },
    "convnext_scratch": {
        "optimizer": {"name": "AdamW", "learning_rate": 1e-3, "weight_decay": 0.05, "clipnorm": 1.0},
        "loss": {"name": "categorical_crossentropy", "label_smoothing": 0.1},
        "learning_rate_schedule": {"name": WARMUP_COSINE, "warmup_epochs": 5},
        "batch_size": None, "original_epochs": None, "normalisation": "grey 0-1, mean 0.5, std 0.5 (in the model)",
        "augmentation": CONVNEXT_AUGMENTATION,
        "mixing": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "probability": 1.0, "switch_probability": 0.5,
                   "full_until": 0.5, "off_from": 0.75},
        "weight_averaging": {"start_fraction": 0.8, "batch_norm": "none to re-estimate: ConvNeXt uses LayerNorm"},
        "metrics": ["accuracy", "macro_f1"],
    },
    "resnet50_frozen": {
        "optimizer": {"name": "Adam", "learning_rate": 1e-3},
        "loss": {"name": "categorical_crossentropy", "label_smoothing": 0.0},
        "learning_rate_schedule": {"name": "constant"},
        "batch_size": None, "original_epochs": None, "normalisation": "Keras' caffe mode (in the model)",
        "augmentation": RESNET50_FROZEN_AUGMENTATION, "mixing": None, "weight_averaging": None,
        "metrics": ["accuracy", "macro_f1"],
    },
    "vit": {
        "optimizer": {"name": "AdamW", "learning_rate": 1e-4, "weight_decay": 0.05, "gradient_accumulation_steps": 1},
        "loss": {"name": "categorical_crossentropy", "label_smoothing": 0.0},
        "learning_rate_schedule": {"name": "constant"},
        "batch_size": None, "original_epochs": None, "normalisation": "grey 0-1, mean 0.5, std 0.5 (in the model)",
        "augmentation": VIT_AUGMENTATION, "mixing": None, "weight_averaging": None,
        "metrics": ["accuracy", "macro_f1"],
        "search_space": {key: list(values) for key, values in VIT_SEARCH_SPACE.items()},
    },
}


@dataclass(frozen=True)
class System:
    """One extra architecture: its builder, its recipe, the work it reproduces and where this project differs."""

    name: str
    build: Callable
    recipe: dict
    citation: str
    differences: tuple[str, ...]
    preprocessing_family: str = PREPROCESSING_FAMILY
    extra: dict = field(default_factory=dict)


SYSTEMS = {
    "alexnet": System(
        "alexnet", build_alexnet, RECIPES["alexnet"],
        "Gabrielms-1 2025, image_classification_alzheimer (github.com/Gabrielms-1/image_classification_alzheimer): "
        "AlexNet with batch normalisation on grey 224 px slices of a four-class Kaggle-style set (9,900 images, "
        "70/15/15 split by image), reported accuracy 0.98 and F1 0.99 at its best epoch (78 of 100); after "
        "Krizhevsky, Sutskever and Hinton 2012, ImageNet classification with deep convolutional neural networks "
        "(NeurIPS), and Ioffe and Szegedy 2015 (batch normalisation)",
        (f"dense layers {ALEXNET_DENSE_WIDTH // ALEXNET_SMALL_DENSE_DIVISOR} wide below 224 px instead of "
         f"{ALEXNET_DENSE_WIDTH}: at 64 px the 4096-wide head is most of the weights and CPU time for a 2x2 map",
         "stride 1 in the first convolution instead of 4: five 2x poolings already reduce 64 px to 2x2",
         "momentum 0.9, the original's first configuration, where its final configuration file sets 0.85",
         PROFILE_EPOCHS, "the profile's batch size where it is smaller than 128 (CPU memory)", OUR_SPLIT,
         "grey repeated to 3 channels, as every model here takes",
         "batch-norm statistics re-estimated on clean training images after every epoch (this project's rule for "
         "every model with batch norm, training.BATCH_NORM_RULE)")),
    "convnext_scratch": System(
        "convnext_scratch", build_convnext, RECIPES["convnext_scratch"],
        "G. H. Huynh 2025, ConvNeXt Alzheimer's Classification (COMP3710 PatternAnalysis-2025 recognition project, "
        "github.com/hunghuynh1110/Alzheimers-MRI-ConvNext): ConvNeXt from scratch on ADNI AD vs NC slices, 0.809 "
        "test accuracy; after Liu et al. 2022, A ConvNet for the 2020s (CVPR), with Mixup (Zhang et al. 2018), "
        "CutMix (Yun et al. 2019) and stochastic weight averaging (Izmailov et al. 2018)",
        (f"depths {CONVNEXT_DEPTHS} and widths {CONVNEXT_WIDTHS} (1.9 M weights at 4 classes), far smaller "
         "than ConvNeXt-T, "
         "for 64-128 px slices and CPU budgets", PROFILE_EPOCHS + "; warm-up capped at the epoch count",
         "random resized crop as RandomZoom(-10%..0) (Keras has no RandomResizedCrop)",
         "SWA averages the weights at the end of each epoch from 80% of the epochs, under the continuing cosine "
         "schedule (no separate constant SWA learning rate); no batch-norm re-estimation since ConvNeXt has only "
         "LayerNorm", "Mixup and CutMix per batch (one or the other, 50/50, as timm's switch), not per sample",
         "LayerNorm in the blocks, as Liu et al., where the original used BatchNorm for its small data set",
         "the profile's batch size instead of the original's 512, and its epoch budget instead of 400 epochs",
         OUR_SPLIT)),
    "resnet50_frozen": System(
        "resnet50_frozen", build_resnet50_frozen, RECIPES["resnet50_frozen"],
        "He et al. 2016, Deep residual learning for image recognition (CVPR); frozen ImageNet backbone with a "
        "Dense 512 head as in the feature-extraction system of issue 18",
        (NO_HUB + "; without them the backbone is random and trains whole (frozen noise would teach nothing), and "
         "the record says so", "optimizer Adam 1e-3 (the original's is not stated)", PROFILE_EPOCHS, OUR_SPLIT)),
    "vit": System(
        "vit", build_vit, RECIPES["vit"],
        "Dosovitskiy et al. 2021, An image is worth 16x16 words (ICLR); hyperparameters chosen by a KerasTuner "
        "search over learning rate, gradient accumulation and weight decay as in the ViT system of issue 18",
        (f"a small ViT (depth {VIT_DEPTH}, dim {VIT_DIM}, {VIT_HEADS} heads, 8x8 patches of image_size/8) trained "
         "from scratch unless the user names a weights file: " + NO_HUB,
         "the search scores validation subjects only (alzlib.search), never the test split", PROFILE_EPOCHS,
         OUR_SPLIT)),
}
EXTRA_MODEL_NAMES = config.EXTRA_MODEL_NAMES


def check_system_name(name: str) -> System:
    """Return the registered system called `name`, else raise ValueError listing the valid ones."""
    if name not in SYSTEMS:
        raise ValueError(f"Unknown system {name!r}: expected one of {', '.join(SYSTEMS)}.")
    return SYSTEMS[name]


def weight_averaging_start(epochs: int, fraction: float) -> int:
    """Return the 0-based epoch from which weights are averaged: the first at or after `fraction` of the epochs."""
    if epochs < 1 or not 0.0 <= fraction < 1.0:
        raise ValueError(f"Need epochs >= 1 and 0 <= fraction < 1, got epochs={epochs}, fraction={fraction}.")
    return min(epochs - 1, math.ceil(fraction * epochs))


def system_recipe(name: str, epochs: int, batch_size: int | None = None, search: dict | None = None) -> dict:
    """Return the JSON-ready recipe of `name` for an epoch budget (batch size and ViT search results filled in)."""
    system = check_system_name(name)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    recipe = {key: (dict(value) if isinstance(value, dict) else value) for key, value in system.recipe.items()}
    original_batch = recipe["batch_size"]
    recipe["batch_size"] = min(original_batch, batch_size) if original_batch and batch_size else (
        batch_size or original_batch or 32)
    recipe["epochs"] = epochs
    if "warmup_epochs" in recipe["learning_rate_schedule"]:
        recipe["learning_rate_schedule"].update(warmup_epochs=min(recipe["learning_rate_schedule"]["warmup_epochs"],
                                                                  epochs - 1), total_epochs=epochs)
    if recipe["weight_averaging"]:
        recipe["weight_averaging"]["start_epoch"] = weight_averaging_start(
            epochs, recipe["weight_averaging"]["start_fraction"])
    if name == "vit":
        recipe["hyperparameter_search"] = search or "not run: the defaults above (the search space's middle values)"
        if search and search.get("informative", True):  # an uninformative search keeps the recipe's values
            recipe["optimizer"].update({key: search["best"][key] for key in VIT_SEARCH_SPACE})
    return {**recipe, "system": name, "citation": system.citation, "differences": list(system.differences),
            "preprocessing_family": system.preprocessing_family}


def build_system(name: str, num_classes: int, image_size: int, weights: str | None = None) -> tuple[object, dict]:
    """Return (keras.Model, info) for a registered system; info records its weights and parameter counts."""
    system = check_system_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer of at least 32, got {image_size!r}.")
    model, info = system.build(num_classes, image_size, weights)
    return model, {"name": name, "num_classes": num_classes, "image_size": image_size, **info,
                   **models.parameter_counts(model)}


def make_optimizer(settings: dict):
    """Return the Keras optimizer a recipe's `optimizer` entry describes (SGD, Adam or AdamW)."""
    accumulation = settings.get("gradient_accumulation_steps") or 1
    common = {"learning_rate": settings["learning_rate"],
              # Keras wants None, not 1, for no accumulation.
              "gradient_accumulation_steps": int(accumulation) if accumulation > 1 else None}
    if settings["name"] == "SGD":
        return keras.optimizers.SGD(momentum=settings["momentum"], weight_decay=settings["weight_decay"], **common)
    if settings["name"] == "Adam":
        return keras.optimizers.Adam(**common)
    if settings["name"] == "AdamW":
        return keras.optimizers.AdamW(weight_decay=settings["weight_decay"], clipnorm=settings.get("clipnorm"),
                                      **common)
    raise ValueError(f"Unknown optimizer {settings['name']!r}: expected SGD, Adam or AdamW.")


def compile_system(model, recipe: dict) -> None:
    """Compile `model` with its recipe's optimizer and one-hot cross-entropy (mixed labels are soft)."""
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe["loss"]["label_smoothing"])
    model.compile(optimizer=make_optimizer(recipe["optimizer"]), loss=loss,
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                           keras.metrics.F1Score(average="macro", name="macro_f1")])
