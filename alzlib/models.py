"""The four classifiers: a baseline CNN and three ImageNet transfer models (Keras 3 API only, any backend).

No tf.* call in model code, so the same models run on the JAX backend for GPU benchmarks.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

# Keras is imported at module level (unlike elsewhere in alzlib): this module defines a registered Keras layer,
# and importing it must register SpatialAttention before any saved model is loaded.
import keras
import numpy as np
from keras import layers

from alzlib import config

TRANSFER_MODELS = ("resnet50", "resnet50_attention", "efficientnetb0")
# The seed recipe's fine-tuning depth: the first N layers of the backbone (counting its input layer) stay frozen.
FROZEN_LAYERS = {"resnet50": 120, "resnet50_attention": 120, "efficientnetb0": 207}
BACKBONES = {"resnet50": "ResNet50", "resnet50_attention": "ResNet50", "efficientnetb0": "EfficientNetB0"}
WEIGHTS_HELP = ("Put Keras' ImageNet file in ~/.keras/models (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 "
                "or efficientnetb0_notop.h5 from https://storage.googleapis.com/tensorflow/keras-applications/) "
                "or pass its path as WEIGHTS")
ATTENTION_LAYER = "spatial_attention"


@keras.saving.register_keras_serializable(package="alzlib")
class SpatialAttention(keras.layers.Layer):
    """CBAM spatial attention: channel mean and max -> 7x7 sigmoid convolution -> features times that map."""

    def __init__(self, kernel_size: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.convolution = keras.layers.Conv2D(1, self.kernel_size, padding="same", activation="sigmoid",
                                               name="attention_convolution")

    def build(self, input_shape):
        self.convolution.build((*input_shape[:-1], 2))

    def attention_map(self, inputs):
        """Return the sigmoid attention map (batch x height x width x 1) of a feature map."""
        pooled = keras.ops.concatenate([keras.ops.mean(inputs, axis=-1, keepdims=True),
                                        keras.ops.max(inputs, axis=-1, keepdims=True)], axis=-1)
        return self.convolution(pooled)

    def call(self, inputs):
        return inputs * self.attention_map(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


def check_model_name(name: str) -> str:
    """Return `name` if it is a model this project builds, else raise ValueError listing the valid ones."""
    if name not in config.MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}: expected one of {', '.join(config.MODEL_NAMES)}.")
    return name


# ----------------------------------------------------------------------------------------------- weights


def _official_weights_file(name: str) -> tuple[str, str]:
    """Return (file name, hash) of Keras' ImageNet no-top weights of a backbone."""
    # The hash tables are not public API; they are the values keras.applications itself checks downloads against.
    if BACKBONES[name] == "ResNet50":
        from keras.src.applications.resnet import WEIGHTS_HASHES

        return "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", WEIGHTS_HASHES["resnet50"][1]
    from keras.src.applications.efficientnet import WEIGHTS_HASHES

    return "efficientnetb0_notop.h5", WEIGHTS_HASHES["b0"][1]


def _file_hash(path: Path, length: int) -> str:
    """Return the sha256 (64 hex digits) or md5 (32) of a file, as Keras' own check uses."""
    digest = hashlib.sha256() if length == 64 else hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_weights_file(name: str, path: str | Path) -> Path:
    """Check that `path` is Keras' ImageNet no-top file for this backbone and place it in Keras' cache; return it."""

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"WEIGHTS file {path} does not exist. {WEIGHTS_HELP}.")
    file_name, expected = _official_weights_file(name)
    if _file_hash(path, len(expected)) != expected:
        raise ValueError(f"WEIGHTS file {path} is not Keras' ImageNet file {file_name} for {name} (its hash differs "
                         f"from {expected}).")
    # keras.applications builds the ImageNet variant of a backbone (EfficientNet adds a rescaling layer) only
    # for weights='imagenet', which loads from Keras' cache: copying the checked file there keeps that path.
    return Path(keras.utils.get_file(file_name, origin=path.resolve().as_uri(), cache_subdir="models",
                                     file_hash=expected))


def _application(name: str, image_size: int, weights: str | None):
    """Return keras.applications' backbone of `name` without its top."""

    constructor = getattr(keras.applications, BACKBONES[name])
    return constructor(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))


def load_backbone(name: str, image_size: int, weights: str | None = "imagenet") -> tuple[object, str, bool]:
    """Return (backbone, weights source, pretrained) for a transfer model; random weights without ImageNet's."""
    if weights in (None, "none"):
        return _application(name, image_size, None), "random (WEIGHTS='none')", False
    if weights == "imagenet":
        try:
            return _application(name, image_size, "imagenet"), "imagenet", True
        # keras.applications raises a plain Exception (wrapping URLError) when it cannot download.
        except Exception as error:  # noqa: BLE001
            reason = f"{type(error).__name__}: {error}"
            warnings.warn(f"ImageNet weights for {name} could not be loaded ({reason}). {WEIGHTS_HELP}. Falling back "
                          f"to random initialisation with ALL layers trainable: results are not transfer learning.",
                          RuntimeWarning, stacklevel=3)
            return _application(name, image_size, None), f"random (ImageNet weights unavailable: {reason})", False
    staged = stage_weights_file(name, weights)
    try:
        backbone = _application(name, image_size, "imagenet")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"Could not load the WEIGHTS file {weights} (staged as {staged}) into {name}: "
                         f"{error}") from error
    return backbone, f"imagenet:{weights}", True


def freeze_layers(backbone, frozen_layers: int) -> dict:
    """Freeze the first `frozen_layers` layers of `backbone` (input layer included), unfreeze the rest; count them."""
    layers = backbone.layers
    if not 0 <= frozen_layers <= len(layers):
        raise ValueError(f"Cannot freeze {frozen_layers} layers of {backbone.name}: it has {len(layers)}.")
    backbone.trainable = True
    for index, layer in enumerate(layers):
        layer.trainable = index >= frozen_layers
    return {"backbone_layers": len(layers), "frozen_layers": int(frozen_layers),
            "trainable_layers": len(layers) - int(frozen_layers)}


def residual_batch_norms(backbone) -> list:
    """Return the BatchNormalization layers that end a residual branch of `backbone` (ResNet50 or EfficientNetB0).

    ResNet50: the last BN of every bottleneck (`*_3_bn`, torchvision's `zero_init_residual`); EfficientNetB0: the
    projection BN (`*project_bn`) of the blocks that add their input back (those with a `*add` layer).
    """
    names = {layer.name for layer in backbone.layers}
    return [layer for layer in backbone.layers if isinstance(layer, layers.BatchNormalization) and (
        layer.name.endswith("_3_bn") or (layer.name.endswith("project_bn")
                                         and layer.name[: -len("project_bn")] + "add" in names))]


def zero_init_residuals(backbone) -> int:
    """Set the scale (gamma) of every residual branch's last BN to zero; return how many layers were changed.

    For training from random weights: every residual block starts as the identity, which makes deep networks
    train from scratch in far fewer steps (Goyal et al. 2017; He et al. 2019). Measured on the cpu profile:
    ResNet50 from random weights stayed at chance for 5 epochs without it (loss to ln 4, one class predicted) and
    reached validation balanced accuracy 0.54 in 4 epochs with it.
    """
    norms = residual_batch_norms(backbone)
    for layer in norms:
        layer.gamma.assign(keras.ops.zeros(layer.gamma.shape, layer.gamma.dtype))  # zeros_like(variable) fails on JAX
    return len(norms)


# ----------------------------------------------------------------------------------------------- models


def _classifier_head(features, num_classes: int):
    """Return the transfer models' head: GAP -> Dropout -> Dense 256 -> Dropout -> Dense 128 -> Dropout -> softmax."""
    x = layers.GlobalAveragePooling2D(name="global_pool")(features)
    x = layers.Dropout(0.3, name="head_dropout_1")(x)
    x = layers.Dense(256, activation="relu", name="head_dense_256")(x)
    x = layers.Dropout(0.4, name="head_dropout_2")(x)
    x = layers.Dense(128, activation="relu", name="head_dense_128")(x)
    x = layers.Dropout(0.5, name="head_dropout_3")(x)
    # The output stays float32 under mixed precision: a float16 softmax loses small probabilities.
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def _baseline_cnn(num_classes: int, image_size: int):
    """Return the baseline CNN: three conv-BN-pool-dropout blocks, a 256-filter conv, GAP and a small dense head."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(x)
        x = layers.BatchNormalization(name=f"bn{block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = layers.Dropout(0.25, name=f"dropout{block}")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dense(128, activation="relu", name="dense_128")(x)
    x = layers.Dropout(0.5, name="dropout_head")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="baseline_cnn")


def _transfer_model(name: str, num_classes: int, image_size: int, weights: str | None):
    """Return (model, info) for a transfer model: a nested keras.applications backbone, optional attention, the head."""

    backbone, source, pretrained = load_backbone(name, image_size, weights)
    # Freezing random layers would only fix noise: without ImageNet weights every layer trains.
    counts = freeze_layers(backbone, FROZEN_LAYERS[name] if pretrained else 0)
    zeroed = 0 if pretrained else zero_init_residuals(backbone)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = backbone(inputs)
    gradcam_layer = backbone.name
    if name == "resnet50_attention":
        features = SpatialAttention(name=ATTENTION_LAYER)(features)
        gradcam_layer = ATTENTION_LAYER
    model = keras.Model(inputs, _classifier_head(features, num_classes), name=name)
    info = {"weights": source, "pretrained": pretrained, "backbone": backbone.name, "gradcam_layer": gradcam_layer,
            "frozen_layers_recipe": FROZEN_LAYERS[name], **counts,
            "zero_initialised_residual_bn": zeroed}
    return model, info


def parameter_counts(model) -> dict:
    """Return the model's trainable, non-trainable and total parameter counts."""
    trainable = int(sum(np.prod(weight.shape) for weight in model.trainable_weights))
    non_trainable = int(sum(np.prod(weight.shape) for weight in model.non_trainable_weights))
    return {"trainable_parameters": trainable, "non_trainable_parameters": non_trainable,
            "total_parameters": trainable + non_trainable}


def build_model(name: str, num_classes: int, image_size: int, weights: str | None = "imagenet") -> tuple[object, dict]:
    """Return (keras.Model, info) for one of config.MODEL_NAMES; info records weights, frozen layers and parameters.

    weights: 'imagenet' (Keras' cache or a download; random with a warning when unavailable), 'none'/None
    (random), or the path of Keras' ImageNet no-top file. The baseline always starts from random weights.
    """

    check_model_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer of at least 32 (the backbones' minimum), got {image_size!r}.")
    if name == "baseline_cnn":
        model = _baseline_cnn(int(num_classes), int(image_size))
        info = {"weights": "random (trained from scratch; WEIGHTS applies to the transfer models only)",
                "pretrained": False, "backbone": None, "gradcam_layer": "conv4", "frozen_layers_recipe": 0,
                "backbone_layers": 0, "frozen_layers": 0, "trainable_layers": len(model.layers)}
    else:
        model, info = _transfer_model(name, int(num_classes), int(image_size), weights)
    info = {"name": name, "num_classes": int(num_classes), "image_size": int(image_size),
            "dtype_policy": keras.config.dtype_policy().name, "layers": len(model.layers), **info,
            **parameter_counts(model)}
    if name == "resnet50_attention":
        info["attention_layer"] = ATTENTION_LAYER
    return model, info


def attention_map_model(model):
    """Return a model: images -> the SpatialAttention layer's sigmoid map (batch x h x w x 1), sharing weights."""
    attention = [layer for layer in model.layers if isinstance(layer, SpatialAttention)]
    if not attention:
        raise ValueError(f"Model {model.name!r} has no SpatialAttention layer (only resnet50_attention has one).")
    layer = attention[0]
    return keras.Model(model.input, layer.attention_map(layer.input), name=f"{model.name}_attention_map")
