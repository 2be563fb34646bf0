"""Explanation (notebook 10): Grad-CAM for every model at a layer with a map of at least 7 x 7, and its checks.

The checks: model randomisation (independent and cascading, Adebayo et al. 2018) and, where ground-truth masks
exist, localisation as an AUROC against two nulls (the re-initialised model's map and the class's mean mask).

Runs on every Keras backend: the one per-backend step, the class score's gradient at the target layer, is in
`alzlib.backend`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import backend, config
from alzlib.evaluation import BOOTSTRAP_RESAMPLES, CONFIDENCE, prepare_for_model, strict_json
from alzlib.sampling import stratified_sample
from alzlib.storage import read_json, save_figure, write_csv, write_json

# Bit flags of the synthetic cohort's masks (docs/architecture.md).
MASK_COMPONENTS = {"ventricles": 1, "cortex": 2, "medial_temporal": 4}
# Pixels darker than this (of 255) are background: the brain is everything brighter.
BRAIN_THRESHOLD = 10
GRADCAM_BATCH = 16
# Below this many subjects a subject bootstrap has few distinct resamples (4 subjects: 35) and its interval means
# little: a verdict then says 'too few subjects' instead of passing or failing.
MIN_BOOTSTRAP_SUBJECTS = 5
# Grad-CAM's map is no finer than its layer. 7 x 7 is the last block of ResNet50 and EfficientNetB0 at 224 px, the
# coarsest map Grad-CAM is usually read at; at the cpu profile's 64 px those last blocks are 2 x 2 (four values).
MIN_MAP_SIZE = 7
TARGET_LAYER_RULE = (f"the last 4-D layer when its map is at least {MIN_MAP_SIZE} x {MIN_MAP_SIZE}; else the last "
                     f"residual-block output (an Add layer, or the activation applied directly to one) with a map "
                     f"that large; else (no residual blocks) the last convolution with a map that large")


# ----------------------------------------------------------------------------------------------- target layer


def _output_rank(layer) -> int | None:
    """Return the rank of a layer's (single) output, or None when it has none or several."""
    try:
        output = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    shape = getattr(output, "shape", None)
    return len(shape) if shape is not None else None


def _is_model(layer) -> bool:
    """True when a layer is itself a model (a nested backbone)."""
    import keras

    return isinstance(layer, keras.Model)


def _search_layer(model, name: str) -> list[str] | None:
    """Return the path of layer names to the layer called `name`, searching into nested models."""
    for layer in model.layers:
        if layer.name == name:
            return [layer.name]
    for layer in model.layers:
        if _is_model(layer) and (inner := _search_layer(layer, name)):
            return [layer.name, *inner]
    return None


def _flat_layers(model, prefix: tuple[str, ...] = ()) -> list[tuple[list[str], object]]:
    """Return (path, layer) of every layer in forward order, a nested model's layers in its place."""
    entries = []
    for layer in model.layers:
        if _is_model(layer):
            entries += _flat_layers(layer, (*prefix, layer.name))
        else:
            entries.append(([*prefix, layer.name], layer))
    return entries


def layer_at(model, path: Sequence[str]):
    """Return the layer at a path of names (nested models walked into)."""
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    return layer


def map_size(layer) -> tuple[int, int] | None:
    """Return the (height, width) of a layer's 4-D output, or None when its output is not 4-D."""
    if _output_rank(layer) != 4:
        return None
    height, width = layer.output.shape[1:3]
    return None if height is None or width is None else (int(height), int(width))


def _is_block_output(layer, previous) -> bool:
    """True for a residual merge (Add) or an activation applied directly to one (ResNet's `*_out`)."""
    import keras

    if isinstance(layer, keras.layers.Add):
        return True
    if not (isinstance(layer, keras.layers.Activation) and isinstance(previous, keras.layers.Add)):
        return False
    try:
        return layer.input is previous.output
    except (AttributeError, ValueError):
        return False


def _last_feature_layer(model) -> list[str]:
    """Return the path of the last layer with a 4-D output (into a nested model when that is the last one)."""
    for layer in reversed(model.layers):
        if _output_rank(layer) == 4:
            return [layer.name, *_last_feature_layer(layer)] if _is_model(layer) else [layer.name]
    raise ValueError(f"Model {model.name!r} has no layer with a 4-D output: Grad-CAM needs a convolutional "
                     f"feature map.")


def _readable_layer(model, min_map_size: int) -> list[str]:
    """Return the path of the last residual-block output, else the last convolution, with a map >= min_map_size."""
    import keras

    entries = _flat_layers(model)
    large = [(index, path, layer) for index, (path, layer) in enumerate(entries)
             if (size := map_size(layer)) is not None and min(size) >= min_map_size]
    blocks = [path for index, path, layer in large if index and _is_block_output(layer, entries[index - 1][1])]
    convolutions = [path for _, path, layer in large if isinstance(layer, keras.layers.Conv2D)]
    if blocks or convolutions:
        return (blocks or convolutions)[-1]
    sizes = sorted({size for _, layer in entries if (size := map_size(layer)) is not None}, reverse=True)
    raise ValueError(f"Model {model.name!r} has no block output or convolution with a map of at least "
                     f"{min_map_size} x {min_map_size} (its largest 4-D outputs: {sizes[:3]}): use a larger image.")


def find_target_layer(model, name: str | None = None, min_map_size: int | None = None) -> list[str]:
    """Return the path of layer names to the Grad-CAM target.

    `name` when given; else the last layer with a 4-D output when its map is at least `min_map_size` on each side
    (or `min_map_size` is None); else the last residual-block output (an Add, or the activation right after one)
    with a map that large; else, in a network without residual blocks, the last convolution with a map that large.
    Nested models are searched into, so the path of ResNet50 in a wrapper is e.g. ['resnet50', 'conv5_block3_out'].
    """
    if name is not None:
        path = _search_layer(model, name)
        if path is None:
            raise ValueError(f"Model {model.name!r} has no layer named {name!r} (nested models searched too).")
        return path
    last = _last_feature_layer(model)
    size = map_size(layer_at(model, last))
    if min_map_size is None or (size is not None and min(size) >= min_map_size):
        return last
    return _readable_layer(model, min_map_size)


# ----------------------------------------------------------------------------------------------- gradient model


def _rebuild(model, call_layer):
    """Re-run a model's graph on new inputs with `call_layer(layer, *args, **kwargs)` in place of each layer call."""
    import keras

    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.input_shape[1:])
        outputs = inputs
        for layer in model.layers:
            outputs = call_layer(layer, outputs)
        return keras.Model(inputs, outputs)
    # The same layers are reused (not copied): the rebuilt graph shares every weight with `model`.
    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call_layer)


def _score_before_softmax(layer, args: tuple, output):
    """Return (class scores, kind): the logits when the output layer ends in a softmax, else the output itself."""
    import keras

    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if isinstance(layer, keras.layers.Dense) and activation == "softmax":
        logits = keras.ops.matmul(args[0], layer.kernel)
        return (keras.ops.add(logits, layer.bias) if layer.use_bias else logits), "logit"
    if isinstance(layer, keras.layers.Activation) and activation == "softmax":
        return args[0], "logit"
    if isinstance(layer, keras.layers.Softmax):
        return args[0], "logit"
    return output, "output"


def feature_model(model, path: Sequence[str], with_scores: bool = True):
    """Return a model: inputs -> [target features, model output(, class scores)], sharing `model`'s weights.

    A target inside a nested model is reached by re-running the outer graph with the nested model replaced by
    one that also returns the target's output (no 'Graph disconnected' in Keras 3).
    """
    import keras

    if len(model.inputs) != 1:
        raise ValueError(f"Grad-CAM supports single-input models; {model.name!r} has {len(model.inputs)} inputs.")
    target = model.get_layer(path[0])
    if len(path) == 1 and not with_scores and not isinstance(model, keras.Sequential):
        return keras.Model(model.inputs[0], [target.output, model.outputs[0]])
    inner = feature_model(target, path[1:], with_scores=False) if len(path) > 1 else None
    final = model.layers[-1]
    stash: dict = {}

    def call_layer(layer, *args, **kwargs):
        if layer is target and inner is not None:
            features, output = inner(*args, **kwargs)
        else:
            output = layer(*args, **kwargs)
            features = output
        if layer is target:
            stash["features"] = features
        if with_scores and layer is final:
            stash["scores"], stash["score_kind"] = _score_before_softmax(layer, args, output)
        return output

    rebuilt = _rebuild(model, call_layer)
    outputs = [stash["features"], rebuilt.outputs[0]]
    if with_scores:
        outputs.append(stash.get("scores", rebuilt.outputs[0]))
    built = keras.Model(rebuilt.inputs[0], outputs, name=f"{model.name}_gradcam")
    built.score_kind = stash.get("score_kind", "output")
    return built


# ----------------------------------------------------------------------------------------------- Grad-CAM


@dataclass
class GradCam:
    """Grad-CAM of one model at one target layer (Selvaraju et al. 2017)."""

    model: object
    target_path: list[str]
    gradient_model: object
    # A traced graph is 4-18x faster per pass on 2 cores at 64 px (ResNet50, baseline CNN, TensorFlow) but tracing
    # ResNet50 takes seconds: worth it for the cascade's dozens of passes, not for one pass over a few images.
    compiled: bool = False
    _graph: object = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, model, target_layer: str | Sequence[str] | None = None, min_map_size: int | None = None,
              compiled: bool = False) -> GradCam:
        """Build Grad-CAM for `model` at `target_layer`: a name, a path of names, or None (find_target_layer's rule).

        `compiled` runs each batch through one traced function (tf.function or jax.jit; weights read at each call).
        """
        path = (list(target_layer) if isinstance(target_layer, (list, tuple))
                else find_target_layer(model, target_layer, min_map_size))
        return cls(model=model, target_path=path, gradient_model=feature_model(model, path), compiled=compiled)

    @property
    def map_size(self) -> tuple[int, int]:
        """The (height, width) of the target layer's map, before upsampling to the input."""
        height, width = self.gradient_model.outputs[0].shape[1:3]
        return int(height), int(width)

    @property
    def score_kind(self) -> str:
        """'logit' when the class score is taken before the softmax, else 'output'."""
        return self.gradient_model.score_kind

    def _batch(self, images: np.ndarray, class_indices: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Return (signed feature-resolution CAMs before the ReLU, probabilities, class indices) of one batch."""
        from alzlib import backend

        if self._graph is None:
            self._graph = backend.class_score_gradient_function(
                self.gradient_model, layer_at(self.model, self.target_path), self.compiled)
        chosen = np.full(len(images), -1) if class_indices is None else np.asarray(class_indices)
        features, gradients, probabilities, chosen = self._graph(images, chosen.astype(np.int32))
        if gradients is None:
            raise ValueError(f"No gradient reaches {'/'.join(self.target_path)}: the class score does not "
                             f"depend on it.")
        # Under mixed precision the features are float16 or bfloat16: the map is formed in float32.
        features, gradients = features.astype(np.float32), gradients.astype(np.float32)
        weights = gradients.mean(axis=(1, 2))
        return np.einsum("bhwc,bc->bhw", features, weights), probabilities.astype(np.float32), chosen

    def compute(self, images: np.ndarray, class_indices: Sequence[int] | None = None,
                batch_size: int = GRADCAM_BATCH) -> dict:
        """Return heatmaps (N x H x W in [0, 1], input resolution), probabilities and the explained class per image.

        `signed_heatmaps` are the same maps before the ReLU (upsampled, not rescaled), for rank comparisons that
        stay defined where a ReLU map is all zero.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must be model-ready (N x H x W x C); got shape {images.shape}.")
        if class_indices is not None and len(class_indices) != len(images):
            raise ValueError(f"{len(class_indices)} class indices for {len(images)} images.")
        parts = [self._batch(images[start:start + batch_size],
                             None if class_indices is None else np.asarray(class_indices[start:start + batch_size]))
                 for start in range(0, len(images), batch_size)]
        signed = upsample_maps(np.concatenate([part[0] for part in parts]), images.shape[1:3])
        return {"heatmaps": normalise_heatmaps(signed), "signed_heatmaps": signed,
                "probabilities": np.concatenate([part[1] for part in parts]),
                "class_indices": np.concatenate([part[2] for part in parts]).astype(np.int64)}


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return feature-resolution maps upsampled (bilinear) to `size` (height, width)."""
    import cv2

    return np.stack([cv2.resize(item.astype(np.float32), (int(size[1]), int(size[0])),
                                interpolation=cv2.INTER_LINEAR) for item in maps])


def normalise_heatmaps(maps: np.ndarray) -> np.ndarray:
    """Return ReLU(maps) scaled so each one's maximum is 1 (all-zero maps stay 0)."""
    positive = np.maximum(maps, 0.0)
    peaks = positive.reshape(len(positive), -1).max(axis=1)
    return positive / np.where(peaks > 0, peaks, 1.0)[:, None, None]


def gradcam(model, images: np.ndarray, class_indices: Sequence[int] | None = None,
            target_layer: str | None = None) -> dict:
    """Return Grad-CAM heatmaps of `images` for `class_indices` (default: the predicted class)."""
    return GradCam.build(model, target_layer).compute(images, class_indices)


# ----------------------------------------------------------------------------------------------- randomisation check


def reinitialised_copy(model, seed: int = config.DEFAULT_SEED):
    """Return the same architecture with freshly initialised weights (clone_model, seeded)."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.models.clone_model(model)


def rank_correlations(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Return the Spearman rank correlation of each pair of maps (NaN where a map is constant)."""
    from scipy.stats import spearmanr

    if first.shape != second.shape:
        raise ValueError(f"Heatmap stacks differ in shape: {first.shape} and {second.shape}.")
    values = []
    with warnings.catch_warnings():
        # A constant map (e.g. an all-zero CAM of a random model) has no ranks: its correlation is undefined.
        warnings.simplefilter("ignore")
        for left, right in zip(first, second):
            values.append(spearmanr(left.ravel(), right.ravel()).statistic)
    return np.asarray(values, dtype=np.float64)


def _correlation_summary(correlations: np.ndarray) -> dict:
    """Return the mean and median of the defined correlations and how many were undefined."""
    defined = correlations[np.isfinite(correlations)]
    return {"mean": float(defined.mean()) if len(defined) else None,
            "median": float(np.median(defined)) if len(defined) else None,
            "undefined": int(len(correlations) - len(defined))}


def randomisation_check(model, images: np.ndarray, class_indices: Sequence[int] | None = None,
                        target_layer: str | Sequence[str] | None = None, seed: int = config.DEFAULT_SEED,
                        trained: dict | None = None, random_explainer: GradCam | None = None) -> dict:
    """Compare Grad-CAM of the trained model with that of a re-initialised copy (Adebayo et al. 2018).

    A high rank correlation means the explanation does not depend on what the model learned. `trained` is a
    GradCam.compute result for these images (computed here when None); `random_explainer` Grad-CAM of the
    re-initialised copy at the same layer (built here from `seed` when None). Two correlations per image: of the
    displayed maps (undefined where one is all zero after the ReLU) and of the signed maps before the ReLU.
    """
    if trained is None:
        explainer = GradCam.build(model, target_layer, MIN_MAP_SIZE)
        trained = explainer.compute(images, class_indices)
        path = explainer.target_path
    else:
        path = (list(target_layer) if isinstance(target_layer, (list, tuple))
                else find_target_layer(model, target_layer, MIN_MAP_SIZE))
    if random_explainer is None:
        random_explainer = GradCam.build(reinitialised_copy(model, seed), path)
    randomised = random_explainer.compute(images, trained["class_indices"])
    displayed = rank_correlations(trained["heatmaps"], randomised["heatmaps"])
    signed = rank_correlations(trained["signed_heatmaps"], randomised["signed_heatmaps"])
    summary, signed_summary = _correlation_summary(displayed), _correlation_summary(signed)
    return {"spearman_per_image": displayed, "signed_spearman_per_image": signed,
            "random_heatmaps": randomised["heatmaps"], "mean_spearman": summary["mean"],
            "median_spearman": summary["median"], "undefined": summary["undefined"],
            "mean_signed_spearman": signed_summary["mean"], "median_signed_spearman": signed_summary["median"],
            "signed_undefined": signed_summary["undefined"], "images": int(len(displayed)), "target_path": path,
            "seed": seed}


# ----------------------------------------------------------------------------------------------- subject bootstrap


def subject_resample_weights(subject_ids: Sequence, strata: Sequence | None = None,
                             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """Return how often each image enters each resample (resamples x images): subjects drawn within each stratum.

    Slices of one subject enter or leave a resample together; drawing within strata (the classes) keeps every
    class in every resample.
    """
    subjects = pd.Series(list(subject_ids)).astype(str).to_numpy()
    groups = np.zeros(len(subjects), dtype=np.int64) if strata is None else np.asarray(strata)
    if len(groups) != len(subjects):
        raise ValueError(f"{len(groups)} strata for {len(subjects)} images.")
    generator = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(subjects)))
    for stratum in np.unique(groups):
        members = np.flatnonzero(groups == stratum)
        names, codes = np.unique(subjects[members], return_inverse=True)
        counts = generator.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=resamples)
        weights[:, members] = counts[:, codes]
    return weights


def bootstrap_mean(values: np.ndarray, weights: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Return the mean of the defined values and its percentile interval over resample weights (NaN left out)."""
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ np.where(defined, values, 0.0)) / (weights @ defined)
    means = means[np.isfinite(means)]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail]) if len(means) else (np.nan, np.nan)
    return {"mean": float(values[defined].mean()) if defined.any() else np.nan, "low": float(low),
            "high": float(high)}


# ------------------------------------------------------------------------------------------ cascading randomisation

# Adebayo et al. (2018) set no threshold. Below 0.5 the two maps share under a quarter of their rank variance
# (rho squared): most of the map has changed.
SIMILARITY_THRESHOLD = 0.5
# One Grad-CAM pass per weighted layer: 9 for the baseline CNN (seconds), over 100 for ResNet50 or EfficientNetB0.
CASCADE_MODELS = ("baseline_cnn",)
# Examples the cascade explains (stratified by class): 16 images x 9 layers x 3 draws of the baseline CNN took 2.1 s
# at 64 px on 2 cores shared with a benchmark (load 5), traced graphs included.
CASCADE_IMAGES = 16
# A single re-initialisation decides a map's sign by chance (a trained map's correlation with its cascade copy moved
# by up to 0.4 between seeds on a planted test); the mean over three draws is steadier at three times the cost.
CASCADE_DRAWS = 3
CASCADE_RULE = (f"passes when the upper end of the {CONFIDENCE:.0%} subject-bootstrap interval of the mean Spearman "
                f"correlation between the trained model's and the cascade's signed maps is below "
                f"{SIMILARITY_THRESHOLD} once every weighted layer from the output down to the Grad-CAM target layer "
                f"is re-initialised, and at every later step; fails otherwise; 'too few subjects' below "
                f"{MIN_BOOTSTRAP_SUBJECTS} subjects. Why there: from that step neither the class-score gradients nor "
                f"the target layer's own weights are the trained ones, so a map that still matches is not explaining "
                f"what was learned")


def weighted_layer_paths(model) -> list[list[str]]:
    """Return the paths of the layers that hold weights, from the input to the output (nested models walked into)."""
    return [path for path, layer in _flat_layers(model) if layer.weights]


def required_cascade_step(model, target_path: Sequence[str]) -> int:
    """Return how many weighted layers, counted from the output, must be re-initialised to reach the target layer.

    The target's own weights count; a target without weights (an Add or activation) is reached at the first
    weighted layer below it.
    """
    entries = _flat_layers(model)
    position = [path for path, _ in entries].index(list(target_path))
    weighted = [index for index, (_, layer) in enumerate(entries) if layer.weights]
    below = [index for index in weighted if index <= position]
    first = below[-1] if below else weighted[0]
    return sum(index >= first for index in weighted)


def cascade_verdict(highs: Sequence[float], required_step: int, subjects: int,
                    threshold: float = SIMILARITY_THRESHOLD) -> str:
    """Return 'pass', 'fail' or 'too few subjects' by CASCADE_RULE; `highs` are the upper bounds, step 0 first.

    An undefined upper bound (every map constant: nothing left to compare) counts as below the threshold.
    """
    later = np.asarray(highs, dtype=np.float64)[required_step:]
    if not 1 <= required_step < len(highs):
        raise ValueError(f"required_step {required_step} is outside the cascade's steps 1..{len(highs) - 1}.")
    if subjects < MIN_BOOTSTRAP_SUBJECTS:
        return "too few subjects"
    return "pass" if bool(np.all(np.nan_to_num(later, nan=-np.inf) < threshold)) else "fail"


def gradcam_maps(target_layer: Sequence[str]) -> Callable:
    """Return a map factory: model -> function(images, class_indices) -> signed Grad-CAM maps at `target_layer`."""

    def factory(model):
        explainer = GradCam.build(model, list(target_layer), compiled=True)
        return lambda images, class_indices: explainer.compute(images, class_indices)["signed_heatmaps"]

    return factory


def _trained_copy(model):
    """Return a clone of `model` that holds the same weight values in variables of its own."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def cascading_randomisation(model, images: np.ndarray, class_indices: Sequence[int] | None = None,
                            target_layer: str | Sequence[str] | None = None, subject_ids: Sequence | None = None,
                            seed: int = config.DEFAULT_SEED, map_factory: Callable | None = None,
                            draws: int = CASCADE_DRAWS, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Re-initialise the weighted layers one at a time from the output down; compare each step's maps with the trained.

    The cascading model-randomisation test of Adebayo et al. (2018). Returns `table` (one row per step, step 0 the
    trained model itself; Spearman mean and subject-bootstrap interval), `required_step`, `verdict` (CASCADE_RULE),
    `target_layer` and `example_maps` (the first image's map at every step). `map_factory(model)` returns a function
    (images, class_indices) -> maps: by default Grad-CAM's signed maps at `target_layer` (MIN_MAP_SIZE rule when
    None). The explained class stays the trained model's; `subject_ids` None treats every image as its own subject.
    Each image's correlation is averaged over `draws` independent re-initialisations (seeds seed, seed + 1, ...).
    """
    images = np.asarray(images, dtype=np.float32)
    path = (list(target_layer) if isinstance(target_layer, (list, tuple))
            else find_target_layer(model, target_layer, MIN_MAP_SIZE))
    if class_indices is None:
        class_indices = np.asarray(backend.predict(model, images)).argmax(axis=1)
    factory = gradcam_maps(path) if map_factory is None else map_factory
    trained = np.asarray(factory(model)(images, class_indices), dtype=np.float64)
    paths = list(reversed(weighted_layer_paths(model)))
    correlations, example_maps = np.full((len(paths), draws, len(images)), np.nan), [trained[0]]
    copy = _trained_copy(model)
    maps_of, trained_weights = factory(copy), copy.get_weights()
    for draw in range(draws):
        copy.set_weights(trained_weights)
        source = reinitialised_copy(model, seed + draw)
        for step, layer_path in enumerate(paths):
            layer_at(copy, layer_path).set_weights(layer_at(source, layer_path).get_weights())
            maps = np.asarray(maps_of(images, class_indices), dtype=np.float64)
            correlations[step, draw] = rank_correlations(trained, maps)
            if draw == 0:
                example_maps.append(maps[0])
    subjects = np.arange(len(images)) if subject_ids is None else subject_ids
    weights = subject_resample_weights(subjects, resamples=resamples, seed=seed)
    rows = [{"step": 0, "layer": "none", "layers_randomised": 0, "mean_spearman": 1.0, "low": 1.0, "high": 1.0,
             "undefined": 0}]
    for step, layer_path in enumerate(paths, start=1):
        with warnings.catch_warnings():
            # An image whose maps were constant in every draw has no correlation: left out, and counted.
            warnings.simplefilter("ignore", RuntimeWarning)
            per_image = np.nanmean(correlations[step - 1], axis=0)
        interval = bootstrap_mean(per_image, weights)
        rows.append({"step": step, "layer": "/".join(layer_path), "layers_randomised": step,
                     "mean_spearman": interval["mean"], "low": interval["low"], "high": interval["high"],
                     "undefined": int(np.isnan(per_image).sum())})
    table = pd.DataFrame(rows)
    required = required_cascade_step(model, path)
    count = len(set(pd.Series(list(subjects)).astype(str)))
    return {"table": table, "required_step": required, "subjects": count,
            "verdict": cascade_verdict(table["high"], required, count), "target_layer": path,
            "example_maps": np.stack(example_maps)}


# ----------------------------------------------------------------------------------------------- localisation


def brain_mask(image: np.ndarray, threshold: int = BRAIN_THRESHOLD) -> np.ndarray:
    """Return the pixels brighter than `threshold` (the brain and skull, not the black background)."""
    values = np.asarray(image)
    return (values[..., 0] if values.ndim == 3 else values) > threshold


def localisation_score(heatmap: np.ndarray, region: np.ndarray, brain: np.ndarray) -> float:
    """Return the share of CAM energy (within the brain) inside `region`, over the region's share of the brain.

    1 is what a uniform map scores; above 1 the CAM concentrates on the region. NaN where undefined.
    """
    if not (heatmap.shape == region.shape == brain.shape):
        raise ValueError(f"Heatmap {heatmap.shape}, region {region.shape} and brain {brain.shape} must match.")
    inside = region.astype(bool) & brain.astype(bool)
    brain_energy = float(heatmap[brain.astype(bool)].sum())
    region_share = inside.sum() / max(int(brain.astype(bool).sum()), 1)
    if region_share == 0 or brain_energy <= 0:
        return float("nan")
    return float(heatmap[inside].sum() / brain_energy / region_share)


def component_regions(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Return the boolean region of each mask component and of any atrophy ('any')."""
    values = np.asarray(mask).astype(np.uint8)
    regions = {"any": values > 0}
    regions.update({name: (values & bit) > 0 for name, bit in MASK_COMPONENTS.items()})
    return regions


def localisation_scores(heatmaps: np.ndarray, masks: np.ndarray, images: np.ndarray,
                        threshold: int = BRAIN_THRESHOLD) -> pd.DataFrame:
    """Return one row per image with the localisation score of every component (NaN where a component is absent)."""
    if not (len(heatmaps) == len(masks) == len(images)):
        raise ValueError(f"{len(heatmaps)} heatmaps, {len(masks)} masks and {len(images)} images must align.")
    rows = []
    for heatmap, mask, image in zip(heatmaps, masks, images):
        brain = brain_mask(image, threshold)
        rows.append({name: localisation_score(heatmap, region, brain)
                     for name, region in component_regions(mask).items()})
    return pd.DataFrame(rows, columns=["any", *MASK_COMPONENTS])


def load_masks(mask_paths: Sequence[str], image_size: int) -> np.ndarray:
    """Read uint8 bit-flag masks and put them through the images' letterbox geometry (nearest neighbour)."""
    from PIL import Image

    from alzlib.preprocessing import letterbox

    masks = []
    for path in mask_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Mask {path} does not exist: the manifest's mask_path points nowhere.")
        with Image.open(path) as handle:
            mask = np.asarray(handle.convert("L"), dtype=np.uint8)
        masks.append(np.asarray(letterbox(mask, image_size, interpolation="nearest"), dtype=np.uint8))
    return np.stack(masks)


# Test images scored for localisation: up to 2 slices of every test subject (neighbouring slices add little that the
# subject bootstrap can use), at most 120 in all, stratified by class; about 54 on the cpu cohort. Each costs two
# Grad-CAM passes: about 0.03-0.06 s per image for ResNet50 at 64 px on 2 shared cores. The training masks of each
# class averaged into the prior null (loading one mask takes about 1 ms).
LOCALISATION_SLICES_PER_SUBJECT = 2
LOCALISATION_IMAGES = 120
PRIOR_IMAGES = 800
LOCALISATION_MAPS = ("trained", "random", "prior")
NULLS = ("random", "prior")
LOCALISATION_RULE = (f"score: AUROC of the map's values for brain pixels inside vs outside the atrophy mask ('any' "
                     f"component; 0.5 is no preference, 1 every mask pixel above every other), maps for the true "
                     f"class; nulls: the re-initialised model's map (same class) and the class's mean training mask "
                     f"(knows where the class's atrophy tends to be, nothing about the image); the trained map beats "
                     f"a null when the {CONFIDENCE:.0%} subject-bootstrap interval of the mean AUROC difference "
                     f"(trained minus null, paired by image) lies above 0, is 'worse' when it lies below 0, "
                     f"'no difference shown' otherwise, and 'too few subjects' below {MIN_BOOTSTRAP_SUBJECTS} subjects")


def localisation_auroc(heatmap: np.ndarray, region: np.ndarray, brain: np.ndarray) -> float:
    """Return the AUROC of the map's values for brain pixels inside vs outside `region` (ties count half).

    0.5 is what a constant map scores; NaN where the region or the rest of the brain is empty.
    """
    from scipy.stats import rankdata

    if not (heatmap.shape == region.shape == brain.shape):
        raise ValueError(f"Heatmap {heatmap.shape}, region {region.shape} and brain {brain.shape} must match.")
    brain = brain.astype(bool)
    inside = region.astype(bool)[brain]
    positives, negatives = int(inside.sum()), int((~inside).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(heatmap, dtype=np.float64)[brain])
    return float((ranks[inside].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def class_mask_priors(masks: np.ndarray, labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Return each class's mean atrophy mask ('any' component): the share of its images with atrophy at each pixel.

    A class without images gets NaN (no prior).
    """
    regions, labels = np.asarray(masks) > 0, np.asarray(labels)
    if len(regions) != len(labels):
        raise ValueError(f"{len(regions)} masks for {len(labels)} labels.")
    return np.stack([regions[labels == label].mean(axis=0) if (labels == label).any()
                     else np.full(regions.shape[1:], np.nan) for label in range(num_classes)])


@dataclass
class LocalisationSample:
    """Test images with ground-truth masks for the localisation score, and the class priors (the spatial null)."""

    images: np.ndarray  # uint8 letterboxed images, N x H x W
    rows: pd.DataFrame  # path, subject_id, label_index of each image
    masks: np.ndarray  # uint8 bit-flag masks in the images' geometry, N x H x W
    class_priors: np.ndarray  # classes x H x W: each class's mean training mask
    class_priors_by_component: dict[str, np.ndarray] | None = None  # the same, per mask component


def localisation_sample(manifest: pd.DataFrame, images: np.ndarray, num_classes: int, seed: int = config.DEFAULT_SEED,
                        limit: int = LOCALISATION_IMAGES, prior_limit: int = PRIOR_IMAGES) -> LocalisationSample | None:
    """Return test images with masks (LOCALISATION_SLICES_PER_SUBJECT per subject, at most `limit`, stratified by
    class) and the class priors from training masks.

    `images` are the manifest's cached images (row order). None when the manifest has no masks (real data) or no
    test or training image has one.
    """
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images for {len(manifest)} manifest rows: they must align.")
    if "mask_path" not in manifest.columns:
        return None
    frame = manifest.reset_index(drop=True)
    with_mask = frame[frame["mask_path"].notna()]
    test, train = with_mask[with_mask["split"] == "test"], with_mask[with_mask["split"] == "train"]
    if test.empty or train.empty:
        return None
    test = test.sample(frac=1.0, random_state=seed).groupby("subject_id").head(LOCALISATION_SLICES_PER_SUBJECT)
    test = stratified_sample(test.sort_index(), limit, seed, by="label_index")
    train = stratified_sample(train, prior_limit, seed, by="label_index")
    size = int(images.shape[1])
    train_masks = load_masks(train["mask_path"].tolist(), size)
    priors = class_mask_priors(train_masks, train["label_index"], num_classes)
    by_component = {name: class_mask_priors(train_masks & bit, train["label_index"], num_classes)
                    for name, bit in MASK_COMPONENTS.items()}
    return LocalisationSample(images=images[test.index.to_numpy()],
                              rows=test[["path", "subject_id", "label_index"]].reset_index(drop=True),
                              masks=load_masks(test["mask_path"].tolist(), size), class_priors=priors,
                              class_priors_by_component=by_component)


def localisation_table(maps: dict[str, np.ndarray], masks: np.ndarray, images: np.ndarray,
                       threshold: int = BRAIN_THRESHOLD, component: str = "any") -> pd.DataFrame:
    """Return one row per image with the AUROC of each named map stack against the atrophy mask's `component`
    ('any' or one of MASK_COMPONENTS)."""
    if component not in ("any", *MASK_COMPONENTS):
        raise ValueError(f"component must be 'any' or one of {list(MASK_COMPONENTS)}, got {component!r}.")
    if any(len(stack) != len(masks) for stack in maps.values()) or len(images) != len(masks):
        raise ValueError(f"Map stacks {[len(stack) for stack in maps.values()]}, {len(masks)} masks and "
                         f"{len(images)} images must align.")
    rows = []
    for index, (mask, image) in enumerate(zip(masks, images)):
        brain = brain_mask(image, threshold)
        region = component_regions(mask)[component]
        rows.append({f"auroc_{name}": localisation_auroc(stack[index], region, brain) for name, stack in maps.items()})
    return pd.DataFrame(rows, columns=[f"auroc_{name}" for name in maps])


def null_verdict(low: float, high: float, subjects: int) -> str:
    """Return the verdict of a trained-minus-null difference by LOCALISATION_RULE."""
    if subjects < MIN_BOOTSTRAP_SUBJECTS:
        return "too few subjects"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undefined"
    return "beats" if low > 0 else "worse" if high < 0 else "no difference shown"


def _localisation_row(part: pd.DataFrame, weights: np.ndarray) -> dict:
    """Return images, subjects, each map's mean AUROC and each null's difference with intervals and verdicts."""
    defined = part["auroc_trained"].notna()
    subjects = int(part.loc[defined, "subject_id"].nunique())
    row = {"images": int(defined.sum()), "subjects": subjects}
    for name in LOCALISATION_MAPS:
        interval = bootstrap_mean(part[f"auroc_{name}"].to_numpy(), weights)
        row.update({f"auroc_{name}": interval["mean"], f"auroc_{name}_low": interval["low"],
                    f"auroc_{name}_high": interval["high"]})
    for null in NULLS:
        interval = bootstrap_mean((part["auroc_trained"] - part[f"auroc_{null}"]).to_numpy(), weights)
        row.update({f"difference_vs_{null}": interval["mean"], f"difference_vs_{null}_low": interval["low"],
                    f"difference_vs_{null}_high": interval["high"],
                    f"verdict_vs_{null}": null_verdict(interval["low"], interval["high"], subjects)})
    return row


def summarise_localisation(table: pd.DataFrame, class_names: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = config.DEFAULT_SEED) -> pd.DataFrame:
    """Return one row per true class and one for all ('all': subjects resampled within their class).

    `table` has subject_id, label_index and auroc_trained, auroc_random, auroc_prior per image.
    """
    missing = {"subject_id", "label_index", *(f"auroc_{name}" for name in LOCALISATION_MAPS)} - set(table.columns)
    if missing:
        raise ValueError(f"The localisation table lacks the columns {sorted(missing)}.")
    rows = [{"class": "all", **_localisation_row(table, subject_resample_weights(
        table["subject_id"], table["label_index"], resamples, seed))}]
    for label, part in table.groupby("label_index", sort=True):
        rows.append({"class": class_names[int(label)], **_localisation_row(
            part, subject_resample_weights(part["subject_id"], None, resamples, seed))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- attention


def attention_maps(model, images: np.ndarray, batch_size: int = GRADCAM_BATCH) -> np.ndarray:
    """Return the SpatialAttention maps of model-ready images, upsampled to the input size (0-1, not rescaled)."""
    import cv2

    from alzlib.models import attention_map_model

    maps = np.asarray(backend.predict(attention_map_model(model), np.asarray(images, np.float32), batch_size),
                      dtype=np.float32)[..., 0]
    height, width = images.shape[1:3]
    return np.stack([cv2.resize(item, (width, height), interpolation=cv2.INTER_LINEAR) for item in maps])


def has_attention(model) -> bool:
    """True when the model has a SpatialAttention layer (resnet50_attention)."""
    return any(type(layer).__name__ == "SpatialAttention" for layer in model.layers)


# ----------------------------------------------------------------------------------------------- figures


def _show_overlay(axis, image: np.ndarray, heatmap: np.ndarray | None, caption: str, alpha: float = 0.45) -> None:
    """Draw a greyscale image with a heatmap over it, without ticks."""
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    if heatmap is not None:
        axis.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    axis.set_title(caption, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def plot_class_overlays(images: np.ndarray, heatmaps: np.ndarray, table: pd.DataFrame, class_names: Sequence[str],
                        title: str):
    """Return a grid of Grad-CAM overlays: one row per true class, correct predictions first, then wrong ones.

    `table` has one row per image with label_index, explained_index, probability and outcome ('correct'/'wrong').
    """
    from matplotlib.figure import Figure

    groups = {(label, outcome): list(np.flatnonzero((table["label_index"] == label).to_numpy()
                                                   & (table["outcome"] == outcome).to_numpy()))
              for label in range(len(class_names)) for outcome in ("correct", "wrong")}
    per_outcome = max(1, max(len(members) for members in groups.values()))
    figure = Figure(figsize=(1.9 * 2 * per_outcome, 2.1 * len(class_names)), layout="constrained")
    axes = figure.subplots(len(class_names), 2 * per_outcome, squeeze=False)
    for label, name in enumerate(class_names):
        for block, outcome in enumerate(("correct", "wrong")):
            members = groups[(label, outcome)]
            for slot in range(per_outcome):
                axis = axes[label, block * per_outcome + slot]
                if slot >= len(members):
                    axis.set_axis_off()
                    axis.set_title(f"{name}: no {outcome} example" if slot == 0 else "", fontsize=7)
                    continue
                row = table.iloc[members[slot]]
                caption = (f"{outcome}: true {name}\npred {class_names[int(row['explained_index'])]} "
                           f"p={row['probability']:.2f}")
                _show_overlay(axis, images[members[slot]], heatmaps[members[slot]], caption)
    figure.suptitle(title, fontsize=10)
    return figure


def plot_randomisation(images: np.ndarray, trained: np.ndarray, randomised: np.ndarray, correlations: np.ndarray,
                       title: str, columns: int = 6):
    """Return a figure: images, Grad-CAM of the trained model, Grad-CAM of the re-initialised copy (with Spearman)."""
    from matplotlib.figure import Figure

    count = min(columns, len(images))
    figure = Figure(figsize=(1.9 * count, 6.2), layout="constrained")
    axes = figure.subplots(3, count, squeeze=False)
    for column in range(count):
        _show_overlay(axes[0, column], images[column], None, "image")
        _show_overlay(axes[1, column], images[column], trained[column], "trained model")
        rho = correlations[column]
        _show_overlay(axes[2, column], images[column], randomised[column],
                      f"random weights, rho={rho:.2f}" if np.isfinite(rho) else "random weights, rho undefined")
    figure.suptitle(title, fontsize=10)
    return figure


def plot_attention(images: np.ndarray, attention: np.ndarray, heatmaps: np.ndarray, title: str, columns: int = 6):
    """Return a figure: images, the attention layer's maps, and Grad-CAM, column by column."""
    from matplotlib.figure import Figure

    count = min(columns, len(images))
    figure = Figure(figsize=(1.9 * count, 6.2), layout="constrained")
    axes = figure.subplots(3, count, squeeze=False)
    for column in range(count):
        _show_overlay(axes[0, column], images[column], None, "image")
        _show_overlay(axes[1, column], images[column], attention[column], "spatial attention (0-1)")
        _show_overlay(axes[2, column], images[column], heatmaps[column], "Grad-CAM")
    figure.suptitle(title, fontsize=10)
    return figure


def plot_cascade(image: np.ndarray, result: dict, title: str):
    """Return a figure: the mean Spearman per cascade step with its interval, and one image's map at every step."""
    from matplotlib.figure import Figure

    table, maps = result["table"], result["example_maps"]
    figure = Figure(figsize=(max(7.0, 1.25 * len(maps)), 5.6), layout="constrained")
    grid = figure.add_gridspec(2, len(maps), height_ratios=[2.4, 1.0])
    curve = figure.add_subplot(grid[0, :])
    curve.fill_between(table["step"], table["low"], table["high"], alpha=0.25, label=f"{CONFIDENCE:.0%} interval")
    curve.plot(table["step"], table["mean_spearman"], marker="o", label="mean Spearman, signed maps")
    curve.axhline(SIMILARITY_THRESHOLD, linestyle="--", color="grey", label=f"threshold {SIMILARITY_THRESHOLD}")
    curve.axvline(result["required_step"], linestyle=":", color="red", label="target layer re-initialised")
    curve.set_xticks(table["step"], table["layer"], rotation=40, ha="right", fontsize=7)
    curve.set(ylim=(-1.05, 1.05), ylabel="similarity to the trained map",
              xlabel="layers re-initialised, cumulative from the output down")
    curve.legend(fontsize=7, loc="lower left")
    curve.set_title(f"verdict: {result['verdict']}", fontsize=9)
    for column, heatmap in enumerate(maps):
        caption = "trained" if column == 0 else f"step {column}"
        _show_overlay(figure.add_subplot(grid[1, column]), image, normalise_heatmaps(heatmap[None])[0], caption)
    figure.suptitle(title, fontsize=10)
    return figure


# ----------------------------------------------------------------------------------------------- the stage


def select_examples(predictions: pd.DataFrame, per_class: int, seed: int = config.DEFAULT_SEED,
                    split: str = "test") -> pd.DataFrame:
    """Pick up to `per_class` correct and `per_class` wrong test predictions of each true class (seeded)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}.")
    rows = predictions[predictions["split"] == split].copy()
    if rows.empty:
        raise ValueError(f"No {split} predictions to explain.")
    rows["outcome"] = np.where(rows["label_index"] == rows["pred_index"], "correct", "wrong")
    shuffled = rows.sample(frac=1.0, random_state=seed)
    return (shuffled.groupby(["label_index", "outcome"]).head(per_class)
            .sort_values(["label_index", "outcome", "path"]).reset_index(drop=True))


def _energy_ratio_summary(table: pd.DataFrame, class_names: Sequence[str]) -> list[dict]:
    """Return the mean, median and share above 1 of each component's energy ratio, per class and over all."""
    rows = []
    groups = [("all", table), *[(class_names[label], part) for label, part in table.groupby("label_index")]]
    for name, part in groups:
        for component in ["any", *MASK_COMPONENTS]:
            values = part[f"energy_ratio_{component}"].dropna()
            rows.append({"class": name, "component": component, "images": int(len(values)),
                         "mean": float(values.mean()) if len(values) else None,
                         "median": float(values.median()) if len(values) else None,
                         "share_above_1": float((values > 1).mean()) if len(values) else None})
    return rows


def localisation_check(explainer: GradCam, random_explainer: GradCam, sample: LocalisationSample, spec: dict | None,
                       class_names: Sequence[str], seed: int = config.DEFAULT_SEED) -> tuple[dict, pd.DataFrame]:
    """Return (record, per-image table): the trained map's AUROC against both nulls, per class, by LOCALISATION_RULE.

    Maps explain each image's true class. The per-image table also has the energy ratio of every mask component.
    """
    prepared = prepare_for_model(sample.images, spec)
    labels = sample.rows["label_index"].to_numpy()
    maps = {"trained": explainer.compute(prepared, labels)["heatmaps"],
            "random": random_explainer.compute(prepared, labels)["heatmaps"], "prior": sample.class_priors[labels]}
    table = pd.concat([sample.rows.reset_index(drop=True),
                       localisation_table(maps, sample.masks, sample.images)], axis=1)
    energy = localisation_scores(maps["trained"], sample.masks, sample.images)
    for component in energy.columns:
        table[f"energy_ratio_{component}"] = energy[component].to_numpy()
    summary = summarise_localisation(table, class_names, seed=seed)
    record = {"rule": LOCALISATION_RULE, "explained_class": "true", "images": len(table),
              "subjects": int(table["subject_id"].nunique()), "per_class": summary.to_dict("records"),
              "energy_ratio": _energy_ratio_summary(table, class_names)}
    # The focal evidence on its own (cohort version 2 puts most of the class in the medial temporal lobe): does the
    # map look there, beyond where that class's medial temporal change tends to be?
    focal = localisation_table({**maps, "prior": sample.class_priors_by_component["medial_temporal"][labels]}
                               if sample.class_priors_by_component else maps, sample.masks, sample.images,
                               component="medial_temporal")
    if focal["auroc_trained"].notna().any():
        focal = pd.concat([sample.rows.reset_index(drop=True), focal], axis=1)
        record["medial_temporal"] = summarise_localisation(focal, class_names, seed=seed).to_dict("records")
        for name in LOCALISATION_MAPS:
            table[f"auroc_{name}_medial_temporal"] = focal[f"auroc_{name}"].to_numpy()
    return record, table


def _example_table(examples: pd.DataFrame, result: dict, randomisation: dict) -> pd.DataFrame:
    """Return one row per example: path, subject, true and explained class, probability, outcome, correlations."""
    table = examples[["path", "subject_id", "label_index"]].reset_index(drop=True).copy()
    table["explained_index"] = result["class_indices"]
    table["probability"] = result["probabilities"][np.arange(len(table)), result["class_indices"]]
    table["outcome"] = np.where(table["label_index"] == table["explained_index"], "correct", "wrong")
    table["randomisation_spearman"] = randomisation["spearman_per_image"]
    table["randomisation_signed_spearman"] = randomisation["signed_spearman_per_image"]
    return table


def _cascade_check(model, prepared: np.ndarray, images: np.ndarray, table: pd.DataFrame, target_path: list[str],
                   seed: int, out_dir: Path, title: str) -> dict:
    """Run the cascade on up to CASCADE_IMAGES examples (stratified by class); write its table and figure."""
    chosen = stratified_sample(table, CASCADE_IMAGES, seed, by="label_index").index.to_numpy()
    table, prepared, images = table.iloc[chosen], prepared[chosen], images[chosen]
    result = cascading_randomisation(model, prepared, table["explained_index"].to_numpy(), target_path,
                                     table["subject_id"].tolist(), seed)
    steps = result["table"].assign(under_rule=lambda frame: frame["step"] >= result["required_step"],
                                   verdict=result["verdict"])
    write_csv(out_dir / "cascading_randomisation.csv", steps)
    save_figure(plot_cascade(images[0], result, title), out_dir / "cascading_randomisation.png")
    return {"rule": CASCADE_RULE, "threshold": SIMILARITY_THRESHOLD, "draws": CASCADE_DRAWS,
            "required_step": result["required_step"], "required_layer": steps.loc[result["required_step"], "layer"],
            "steps": len(steps) - 1, "images": len(table), "subjects": result["subjects"], "verdict": result["verdict"],
            "figure": "cascading_randomisation.png"}


def explain_model(model, images: np.ndarray, examples: pd.DataFrame, class_names: Sequence[str], spec: dict | None,
                  out_dir: str | Path, model_name: str, data_label: str, seed: int = config.DEFAULT_SEED,
                  target_layer: str | None = None, localisation: LocalisationSample | None = None,
                  cascade: bool = False) -> dict:
    """Grad-CAM of the examples with the randomisation check, localisation against nulls, the cascade; write them.

    `images` are the uint8 letterboxed images of `examples` (row order); `spec` the model's preprocessing spec. The
    target layer follows TARGET_LAYER_RULE unless named. Localisation runs on `localisation` (None: skipped, as for
    real data without masks); the cascading randomisation runs when `cascade` is True. Writes gradcam/<model>/.
    """
    if len(images) != len(examples):
        raise ValueError(f"{len(images)} images for {len(examples)} example rows: they must align.")
    out_dir = Path(out_dir)
    prepared = prepare_for_model(images, spec)
    explainer = GradCam.build(model, target_layer, MIN_MAP_SIZE)
    result = explainer.compute(prepared)
    random_explainer = GradCam.build(reinitialised_copy(model, seed), explainer.target_path)
    randomisation = randomisation_check(model, prepared, target_layer=explainer.target_path, seed=seed,
                                        trained=result, random_explainer=random_explainer)
    table = _example_table(examples, result, randomisation)
    height, width = explainer.map_size
    record = {"model": model_name, "data_label": data_label, "target_layer": explainer.target_path,
              "map_height": height, "map_width": width, "target_layer_rule": TARGET_LAYER_RULE,
              "score": explainer.score_kind, "images": len(table), "seed": seed,
              "randomisation": {key: randomisation[key] for key in (
                  "mean_spearman", "median_spearman", "undefined", "mean_signed_spearman", "median_signed_spearman",
                  "signed_undefined", "images", "seed")}}
    if localisation is None:
        record["localisation"] = {"skipped": "no ground-truth masks for these images (only the synthetic cohort "
                                             "has them)"}
    else:
        record["localisation"], per_image = localisation_check(explainer, random_explainer, localisation, spec,
                                                               class_names, seed)
        write_csv(out_dir / "localisation_per_image.csv", per_image)
    suffix = f" ({data_label})" if data_label else ""
    figures = [save_figure(plot_class_overlays(images, result["heatmaps"], table, class_names,
                                               f"{model_name}: Grad-CAM by class and outcome{suffix}"),
                           out_dir / "overlays.png").name,
               save_figure(plot_randomisation(images, result["heatmaps"], randomisation["random_heatmaps"],
                                              randomisation["spearman_per_image"],
                                              f"{model_name}: model-randomisation check{suffix}"),
                           out_dir / "randomisation.png").name]
    if cascade:
        record["cascading_randomisation"] = _cascade_check(
            model, prepared, images, table, explainer.target_path, seed, out_dir,
            f"{model_name}: cascading randomisation from the output down{suffix}")
        figures.append(record["cascading_randomisation"]["figure"])
    else:
        record["cascading_randomisation"] = {"skipped": f"run for {', '.join(CASCADE_MODELS)} only (one Grad-CAM "
                                                        f"pass per weighted layer and draw)"}
    if has_attention(model):
        maps = attention_maps(model, prepared)
        figures.append(save_figure(plot_attention(images, maps, result["heatmaps"],
                                                  f"{model_name}: attention map beside Grad-CAM{suffix}"),
                                   out_dir / "attention.png").name)
    record["figures"] = figures
    write_csv(out_dir / "per_image.csv", table)
    record = strict_json(record)
    write_json(out_dir / "gradcam.json", record)
    return record


def _summary_row(name: str, record: dict) -> dict:
    """Return a model's summary.csv row: target layer and map size, the randomisation checks, localisation (all)."""
    row = {"model": name, "target_layer": "/".join(record["target_layer"]), "map_height": record.get("map_height"),
           "map_width": record.get("map_width"), "score": record["score"], "images": record["images"],
           "randomisation_mean_spearman": record["randomisation"]["mean_spearman"],
           "randomisation_undefined": record["randomisation"]["undefined"],
           "randomisation_mean_signed_spearman": record["randomisation"]["mean_signed_spearman"]}
    cascade = record.get("cascading_randomisation", {})
    row.update({"cascade_verdict": cascade.get("verdict", "not run"), "cascade_required_layer":
                cascade.get("required_layer")})
    overall = next((entry for entry in record["localisation"].get("per_class", []) if entry["class"] == "all"), {})
    for column in ("auroc_trained", "auroc_trained_low", "auroc_trained_high", "auroc_random", "auroc_prior",
                   "difference_vs_random", "difference_vs_random_low", "difference_vs_random_high",
                   "verdict_vs_random", "difference_vs_prior", "difference_vs_prior_low", "difference_vs_prior_high",
                   "verdict_vs_prior"):
        row[f"localisation_{column}"] = overall.get(column)
    focal = next((entry for entry in record["localisation"].get("medial_temporal", []) if entry["class"] == "all"),
                 {})
    for column in ("auroc_trained", "auroc_trained_low", "auroc_trained_high", "auroc_prior", "difference_vs_prior",
                   "difference_vs_prior_low", "difference_vs_prior_high", "verdict_vs_prior"):
        row[f"medial_temporal_{column}"] = focal.get(column)
    return row


def summarise_explanations(gradcam_dir: str | Path, model_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Combine every model's gradcam.json into gradcam/summary.csv and summary.json, plus localisation.csv and
    cascading_randomisation.csv where those checks ran."""
    gradcam_dir = Path(gradcam_dir)
    names = list(model_names) if model_names is not None else list(config.MODEL_NAMES)
    rows, localisation, cascades, missing = [], [], [], []
    for name in names:
        path = gradcam_dir / name / "gradcam.json"
        if not path.is_file():
            missing.append({"model": name, "reason": f"{path} does not exist"})
            continue
        record = read_json(path)
        rows.append(_summary_row(name, record))
        localisation += [{"model": name, "region": region, **entry}
                         for region, key in (("any", "per_class"), ("medial_temporal", "medial_temporal"))
                         for entry in record["localisation"].get(key, [])]
        if (gradcam_dir / name / "cascading_randomisation.csv").is_file():
            cascades.append(pd.read_csv(gradcam_dir / name / "cascading_randomisation.csv").assign(model=name))
    if not rows:
        raise FileNotFoundError(f"No gradcam.json under {gradcam_dir} for any of {names}: run explain_model first.")
    table = pd.DataFrame(rows)
    write_csv(gradcam_dir / "summary.csv", table)
    if localisation:
        write_csv(gradcam_dir / "localisation.csv", pd.DataFrame(localisation))
    if cascades:
        steps = pd.concat(cascades, ignore_index=True)
        write_csv(gradcam_dir / "cascading_randomisation.csv", steps[["model", *steps.columns.drop("model")]])
    reading = ("randomisation: a high rank correlation between the trained and re-initialised model's maps means "
               "the map does not depend on what was learned (the displayed maps' correlation is undefined where a "
               "map is all zero after the ReLU; the signed maps before the ReLU are always compared); cascading "
               "randomisation: the same correlation as layers are re-initialised from the output down; localisation: "
               "AUROC of the map inside vs outside the atrophy mask, against two nulls")
    rules = {"target_layer": TARGET_LAYER_RULE, "cascading_randomisation": CASCADE_RULE,
             "localisation": LOCALISATION_RULE}
    write_json(gradcam_dir / "summary.json", strict_json({"models": rows, "missing": missing, "rules": rules,
                                                          "reading": reading}))
    return table
