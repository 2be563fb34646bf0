"""The non-deep baseline `linear_pixels`: logistic regression on downsampled, standardised pixels (PCA first).

Wen et al. (2020) found 2D slice CNNs no better than a linear SVM on the same data, so this model is trained on the
same splits and folds as the CNNs and appears in every comparison: a CNN claims nothing unless it beats it.
Everything is scikit-learn's (StandardScaler, PCA, LogisticRegression); only the pixel downsampling is numpy/OpenCV.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from alzlib import config
from alzlib.metrics import balanced_accuracy
from alzlib.storage import atomic_path, write_json

NAME = "linear_pixels"
PIXELS = 32  # images are area-downsampled to 32 x 32 (1,024 features) before standardising
PCA_COMPONENTS = 100
# Inverse regularisation strengths tried; the one with the best validation balanced accuracy is kept (ties: the
# stronger regularisation), as the CNNs keep their best validation epoch. The test split is never read.
C_GRID = (0.001, 0.01, 0.1, 1.0)
MAX_ITERATIONS = 2000
# Logit given to a class the training split lacks (scikit-learn fits only the classes it saw): this far below the
# row's lowest logit, so its probability is exp(-50), about 2e-22, instead of an undefined column.
ABSENT_CLASS_MARGIN = 50.0


def pixel_features(images: np.ndarray, pixels: int = PIXELS) -> np.ndarray:
    """Return uint8 images (N x S x S, or N x S x S x C: channels averaged) as N x pixels^2 floats in [0, 1]."""
    import cv2

    array = np.asarray(images)
    if array.ndim == 4:
        array = array.mean(axis=-1)
    if array.ndim != 3 or len(array) == 0:
        raise ValueError(f"images must be a non-empty N x H x W (or N x H x W x C) array, got shape {array.shape}.")
    array = array.astype(np.float32) / 255.0
    if array.shape[1:] != (pixels, pixels):
        array = np.stack([cv2.resize(image, (pixels, pixels), interpolation=cv2.INTER_AREA) for image in array])
    return array.reshape(len(array), -1)


def build(c: float, train_images: int, seed: int):
    """Return the unfitted scikit-learn pipeline: standardise, PCA (at most train_images - 1 components), logistic."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    components = max(1, min(PCA_COMPONENTS, train_images - 1, PIXELS * PIXELS))
    return make_pipeline(StandardScaler(), PCA(n_components=components, random_state=seed),
                         LogisticRegression(C=c, class_weight="balanced", max_iter=MAX_ITERATIONS))


def predict(model, images: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (probabilities, logits), N x num_classes each, columns in label-index order (absent classes included)."""
    features = pixel_features(images)
    seen = model.classes_.astype(int)
    scores = model.decision_function(features)
    if scores.ndim == 1:  # two classes seen: scikit-learn returns the second class's log-odds only
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    logits = np.repeat(scores.min(axis=1, keepdims=True) - ABSENT_CLASS_MARGIN, num_classes, axis=1)
    logits[:, seen] = scores
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return probabilities, logits


def _split(manifest: pd.DataFrame, images: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = (manifest["split"] == split).to_numpy()
    if not rows.any():
        raise ValueError(f"The {split} split is empty: {NAME} needs train and val images.")
    return images[rows], manifest["label_index"].to_numpy(int)[rows]


def train(manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], seed: int = config.DEFAULT_SEED
          ) -> tuple[object, dict]:
    """Fit one model per C on the train split, keep the best on val; return the model and what was done."""
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images for {len(manifest)} manifest rows: they must align row by row.")
    started = time.perf_counter()
    train_images, train_labels = _split(manifest, images, "train")
    val_images, val_labels = _split(manifest, images, "val")
    if len(np.unique(train_labels)) < 2:
        raise ValueError(f"The train split holds one class only ({class_names[train_labels[0]]}): {NAME} needs two.")
    features = pixel_features(train_images)
    search, best = [], None
    for c in C_GRID:
        model = build(c, len(train_labels), seed).fit(features, train_labels)
        probabilities, _ = predict(model, val_images, len(class_names))
        score = balanced_accuracy(val_labels, probabilities.argmax(axis=1))
        search.append({"C": c, "val_balanced_accuracy": score})
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    pca = model.named_steps["pca"]
    return model, {"C": c, "val_balanced_accuracy": score, "search": search, "train_images": int(len(train_labels)),
                   "val_images": int(len(val_labels)), "pca_components": int(pca.n_components_),
                   "explained_variance": float(pca.explained_variance_ratio_.sum()),
                   "training_seconds": round(time.perf_counter() - started, 2)}


def recipe() -> dict:
    """Return how the model is built and chosen (JSON-ready)."""
    return {"features": f"letterboxed cache images area-downsampled to {PIXELS} x {PIXELS}, scaled to [0, 1]",
            "standardise": "StandardScaler (per pixel, fitted on train)",
            "pca": f"PCA, up to {PCA_COMPONENTS} components (fewer than the train images), fitted on train",
            "classifier": "LogisticRegression (multinomial, lbfgs), class_weight='balanced'",
            "C_grid": list(C_GRID), "selection": "highest validation balanced accuracy; ties: the smaller C",
            "framework": "scikit-learn"}


def save(model, fit: dict, settings: config.Settings, manifest: pd.DataFrame, class_names: list[str],
         output_name: str = NAME, fold: dict | None = None) -> dict:
    """Write models/<output_name>.joblib and its record models/<output_name>.json; return the record."""
    import joblib

    from alzlib import environment, training

    folder = settings.paths.models
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / f"{output_name}.joblib"
    with atomic_path(model_path) as temporary:
        joblib.dump(model, temporary)
    record = {"model": output_name, "architecture": NAME, "framework": "scikit-learn", "fold": fold,
              "synthetic": settings.synthetic, "class_names": class_names, "num_classes": len(class_names),
              "recipe": recipe(), "fit": fit, "weights": "none (fitted from scratch)",
              "train_images": fit["train_images"], "val_images": fit["val_images"],
              "trainable_parameters": _parameters(model), "non_trainable_parameters": 0,
              "best_validation": {"val_balanced_accuracy": fit["val_balanced_accuracy"]},
              "training_seconds": fit["training_seconds"], "epochs_run": None, "best_epoch": None,
              "seed": settings.seed, "profile": settings.profile.to_dict(),
              "data_manifest_hash": training.manifest_hash(manifest),
              "files": {"model": model_path.name}, "run": environment.run_metadata(settings)}
    write_json(folder / f"{output_name}.json", record)
    return record


def _parameters(model) -> int:
    """Return the fitted numbers of the pipeline: scaler means and scales, PCA components, coefficients."""
    scaler, pca, logistic = (model.named_steps[key] for key in ("standardscaler", "pca", "logisticregression"))
    return int(scaler.mean_.size * 2 + pca.components_.size + pca.mean_.size + logistic.coef_.size
               + logistic.intercept_.size)


def load(path: str | Path):
    """Load a saved linear_pixels model (a joblib file this pipeline wrote; never load one from elsewhere)."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train {NAME} first (notebook 05).")
    return joblib.load(path)


def evaluate(model, manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], out_dir: str | Path,
             seed: int, data_label: str, model_name: str = NAME, figures: bool = True) -> dict:
    """Predict the val and test rows, write predictions.parquet (probabilities and logits) and metrics.json."""
    from alzlib import evaluation
    from alzlib.storage import write_parquet

    rows = manifest["split"].isin(["val", "test"]).to_numpy()
    evaluated = manifest[rows]
    probabilities, logits = predict(model, images[rows], len(class_names))
    frame = evaluation.predictions_frame(evaluated, probabilities, class_names, logits)
    write_parquet(Path(out_dir) / "predictions.parquet", frame)
    return evaluation.evaluate_predictions(frame, class_names, out_dir, seed=seed, data_label=data_label,
                                           model_name=model_name, figures=figures,
                                           logit_source="LogisticRegression.decision_function (exact logits)")
