"""Explanation (notebook 10): Grad-CAM for every model, its randomisation and localisation checks, and figures.

Runs on the TensorFlow backend only (gradients through `tf.GradientTape`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import config
from alzlib.evaluation import prepare_for_model, strict_json
from alzlib.storage import read_json, save_figure, write_csv, write_json

# Bit flags of the synthetic cohort's masks (docs/architecture.md).
MASK_COMPONENTS = {"ventricles": 1, "cortex": 2, "medial_temporal": 4}
# Pixels darker than this (of 255) are background: the brain is everything brighter.
BRAIN_THRESHOLD = 10
GRADCAM_BATCH = 16


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


def find_target_layer(model, name: str | None = None) -> list[str]:
    """Return the path of layer names to the Grad-CAM target: `name`, or the last layer with a 4-D output.

    A nested model (a backbone inside a Functional model) is searched into, so the path of ResNet50 in
    a wrapper is e.g. ['resnet50', 'conv5_block3_out'].
    """
    if name is not None:
        path = _search_layer(model, name)
        if path is None:
            raise ValueError(f"Model {model.name!r} has no layer named {name!r} (nested models searched too).")
        return path
    for layer in reversed(model.layers):
        if _output_rank(layer) == 4:
            return [layer.name, *find_target_layer(layer)] if _is_model(layer) else [layer.name]
    raise ValueError(f"Model {model.name!r} has no layer with a 4-D output: Grad-CAM needs a convolutional "
                     f"feature map.")


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

    @classmethod
    def build(cls, model, target_layer: str | Sequence[str] | None = None) -> GradCam:
        """Build Grad-CAM for `model` at `target_layer` (a name, a path of names, or None for the last 4-D layer)."""
        path = list(target_layer) if isinstance(target_layer, (list, tuple)) else find_target_layer(model, target_layer)
        return cls(model=model, target_path=path, gradient_model=feature_model(model, path))

    @property
    def score_kind(self) -> str:
        """'logit' when the class score is taken before the softmax, else 'output'."""
        return self.gradient_model.score_kind

    def _batch(self, images: np.ndarray, class_indices: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Return (signed feature-resolution CAMs before the ReLU, probabilities, class indices) of one batch."""
        import tensorflow as tf

        inputs = tf.convert_to_tensor(images, dtype=tf.float32)
        with tf.GradientTape() as tape:
            features, probabilities, scores = self.gradient_model(inputs, training=False)
            chosen = tf.argmax(probabilities, axis=1) if class_indices is None else tf.constant(class_indices)
            selected = tf.gather(scores, tf.cast(chosen, tf.int32), axis=1, batch_dims=1)
        gradients = tape.gradient(selected, features)
        if gradients is None:
            raise ValueError(f"No gradient reaches {'/'.join(self.target_path)}: the class score does not "
                             f"depend on it.")
        # Under mixed precision the features are float16: the map is formed in float32.
        features, gradients = tf.cast(features, tf.float32), tf.cast(gradients, tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2))
        signed = tf.einsum("bhwc,bc->bhw", features, weights)
        return signed.numpy(), tf.cast(probabilities, tf.float32).numpy(), np.asarray(chosen)

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
                        trained: dict | None = None) -> dict:
    """Compare Grad-CAM of the trained model with that of a re-initialised copy (Adebayo et al. 2018).

    A high rank correlation means the explanation does not depend on what the model learned. `trained` is a
    GradCam.compute result for these images (computed here when None). Two correlations per image: of the
    displayed maps (undefined where one is all zero after the ReLU) and of the signed maps before the ReLU.
    """
    if trained is None:
        explainer = GradCam.build(model, target_layer)
        trained = explainer.compute(images, class_indices)
        path = explainer.target_path
    else:
        path = list(target_layer) if isinstance(target_layer, (list, tuple)) else find_target_layer(model, target_layer)
    randomised = GradCam.build(reinitialised_copy(model, seed), path).compute(images, trained["class_indices"])
    displayed = rank_correlations(trained["heatmaps"], randomised["heatmaps"])
    signed = rank_correlations(trained["signed_heatmaps"], randomised["signed_heatmaps"])
    summary, signed_summary = _correlation_summary(displayed), _correlation_summary(signed)
    return {"spearman_per_image": displayed, "signed_spearman_per_image": signed,
            "random_heatmaps": randomised["heatmaps"], "mean_spearman": summary["mean"],
            "median_spearman": summary["median"], "undefined": summary["undefined"],
            "mean_signed_spearman": signed_summary["mean"], "median_signed_spearman": signed_summary["median"],
            "signed_undefined": signed_summary["undefined"], "images": int(len(displayed)), "target_path": path,
            "seed": seed}


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


# ----------------------------------------------------------------------------------------------- attention


def attention_maps(model, images: np.ndarray, batch_size: int = GRADCAM_BATCH) -> np.ndarray:
    """Return the SpatialAttention maps of model-ready images, upsampled to the input size (0-1, not rescaled)."""
    import cv2

    from alzlib.models import attention_map_model

    maps = np.asarray(attention_map_model(model).predict(np.asarray(images, np.float32), batch_size=batch_size,
                                                         verbose=0), dtype=np.float32)[..., 0]
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


# ----------------------------------------------------------------------------------------------- the stage


def select_examples(predictions: pd.DataFrame, per_class: int, seed: int = config.DEFAULT_SEED, split: str = "test",
                    manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pick up to `per_class` correct and `per_class` wrong test predictions of each true class (seeded).

    With `manifest`, its mask_path column (synthetic cohort) is joined on path.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}.")
    rows = predictions[predictions["split"] == split].copy()
    if rows.empty:
        raise ValueError(f"No {split} predictions to explain.")
    rows["outcome"] = np.where(rows["label_index"] == rows["pred_index"], "correct", "wrong")
    shuffled = rows.sample(frac=1.0, random_state=seed)
    chosen = (shuffled.groupby(["label_index", "outcome"]).head(per_class)
              .sort_values(["label_index", "outcome", "path"]).reset_index(drop=True))
    if manifest is not None and "mask_path" in manifest.columns:
        chosen = chosen.merge(manifest[["path", "mask_path"]], on="path", how="left")
    return chosen


def _localisation_summary(table: pd.DataFrame, class_names: Sequence[str]) -> list[dict]:
    """Return the mean, median and share above 1 of each component's score, per class and over all classes."""
    rows = []
    groups = [("all", table), *[(class_names[label], part) for label, part in table.groupby("label_index")]]
    for name, part in groups:
        for component in ["any", *MASK_COMPONENTS]:
            values = part[f"localisation_{component}"].dropna()
            rows.append({"class": name, "component": component, "images": int(len(values)),
                         "mean": float(values.mean()) if len(values) else None,
                         "median": float(values.median()) if len(values) else None,
                         "share_above_1": float((values > 1).mean()) if len(values) else None})
    return rows


def explain_model(model, images: np.ndarray, examples: pd.DataFrame, class_names: Sequence[str], spec: dict | None,
                  out_dir: str | Path, model_name: str, data_label: str, seed: int = config.DEFAULT_SEED,
                  target_layer: str | None = None) -> dict:
    """Grad-CAM of the example images, the randomisation check, localisation where masks exist; write gradcam/<model>/.

    `images` are the uint8 letterboxed images of `examples` (row order); `spec` the model's preprocessing spec.
    """
    if len(images) != len(examples):
        raise ValueError(f"{len(images)} images for {len(examples)} example rows: they must align.")
    out_dir = Path(out_dir)
    prepared = prepare_for_model(images, spec)
    explainer = GradCam.build(model, target_layer)
    result = explainer.compute(prepared)
    randomisation = randomisation_check(model, prepared, target_layer=explainer.target_path, seed=seed,
                                        trained=result)
    table = examples[["path", "subject_id", "label_index"]].reset_index(drop=True).copy()
    table["explained_index"] = result["class_indices"]
    table["probability"] = result["probabilities"][np.arange(len(table)), result["class_indices"]]
    table["outcome"] = np.where(table["label_index"] == table["explained_index"], "correct", "wrong")
    table["randomisation_spearman"] = randomisation["spearman_per_image"]
    table["randomisation_signed_spearman"] = randomisation["signed_spearman_per_image"]
    record = {"model": model_name, "data_label": data_label, "target_layer": explainer.target_path,
              "score": explainer.score_kind, "images": len(table), "seed": seed,
              "randomisation": {key: randomisation[key] for key in (
                  "mean_spearman", "median_spearman", "undefined", "mean_signed_spearman", "median_signed_spearman",
                  "signed_undefined", "images", "seed")}}
    with_mask = (examples["mask_path"].notna().to_numpy() if "mask_path" in examples.columns
                 else np.zeros(len(examples), dtype=bool))
    if with_mask.any():
        masks = load_masks(examples["mask_path"][with_mask].tolist(), images.shape[1])
        scores = localisation_scores(result["heatmaps"][with_mask], masks, images[with_mask])
        for component in scores.columns:
            # Images without a mask (a real data set mixed in) keep NaN: undefined, not zero.
            column = np.full(len(table), np.nan)
            column[with_mask] = scores[component].to_numpy()
            table[f"localisation_{component}"] = column
        record["localisation"] = _localisation_summary(table, class_names)
    else:
        record["localisation"] = {"skipped": "no ground-truth masks for these images (only the synthetic cohort "
                                             "has them)"}
    suffix = f" ({data_label})" if data_label else ""
    figures = [save_figure(plot_class_overlays(images, result["heatmaps"], table, class_names,
                                               f"{model_name}: Grad-CAM by class and outcome{suffix}"),
                           out_dir / "overlays.png").name,
               save_figure(plot_randomisation(images, result["heatmaps"], randomisation["random_heatmaps"],
                                              randomisation["spearman_per_image"],
                                              f"{model_name}: model-randomisation check{suffix}"),
                           out_dir / "randomisation.png").name]
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


def summarise_explanations(gradcam_dir: str | Path, model_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Combine every model's gradcam.json into gradcam/summary.csv, localisation.csv and summary.json."""
    gradcam_dir = Path(gradcam_dir)
    names = list(model_names) if model_names is not None else list(config.MODEL_NAMES)
    rows, localisation, missing = [], [], []
    for name in names:
        path = gradcam_dir / name / "gradcam.json"
        if not path.is_file():
            missing.append({"model": name, "reason": f"{path} does not exist"})
            continue
        record = read_json(path)
        overall = {}
        if isinstance(record["localisation"], list):
            localisation += [{"model": name, **entry} for entry in record["localisation"]]
            overall = {f"localisation_{entry['component']}": entry["mean"] for entry in record["localisation"]
                       if entry["class"] == "all"}
        rows.append({"model": name, "target_layer": "/".join(record["target_layer"]), "score": record["score"],
                     "images": record["images"],
                     "randomisation_mean_spearman": record["randomisation"]["mean_spearman"],
                     "randomisation_undefined": record["randomisation"]["undefined"],
                     "randomisation_mean_signed_spearman": record["randomisation"]["mean_signed_spearman"],
                     **overall})
    if not rows:
        raise FileNotFoundError(f"No gradcam.json under {gradcam_dir} for any of {names}: run explain_model first.")
    table = pd.DataFrame(rows)
    write_csv(gradcam_dir / "summary.csv", table)
    if localisation:
        write_csv(gradcam_dir / "localisation.csv", pd.DataFrame(localisation))
    reading = ("randomisation: a high rank correlation between the trained and re-initialised model's maps means "
               "the map does not depend on what was learned (the displayed maps' correlation is undefined where a "
               "map is all zero after the ReLU; the signed maps before the ReLU are always compared); localisation: "
               "above 1 means more Grad-CAM energy inside the atrophy mask than a uniform map would put there")
    write_json(gradcam_dir / "summary.json", strict_json({"models": rows, "missing": missing, "reading": reading}))
    return table
