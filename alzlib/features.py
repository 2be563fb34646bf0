"""Feature maps (notebook 04): t-SNE and UMAP of raw pixels and of an image embedding, by class and by subject.

The subject view shows why slice-level splits leak: slices of one subject sit together in any feature space, so a
test slice whose neighbours from the same scan are in train is easy for the wrong reason. A nearest-neighbour
statistic backs the picture with a number.

The embedding is, in order of preference: a trained model the user names (WEIGHTS=<file>.keras), a Keras ImageNet
backbone (cache, download or WEIGHTS=<Keras' ImageNet .h5 file>), else a stated fallback that needs no weights:
whitened-patch k-means features (Coates, Lee and Ng 2011), a single-layer unsupervised feature extractor fitted on
the training images. A randomly initialised deep backbone is not used: its features are an arbitrary projection
whose map would be read as something a network learned.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from alzlib import backend, sampling, storage
from alzlib.metrics import balanced_accuracy

MANIFEST_COLUMNS = ("path", "label", "subject_id", "split")
PIXEL_SIZE = 64
PCA_COMPONENTS = 50
NEIGHBOURS = 5
MIN_POINTS = 10
TSNE_PERPLEXITY = 30.0
TSNE_ITERATIONS = 1000
UMAP_NEIGHBOURS = 15
UMAP_MIN_DISTANCE = 0.1
# ImageNet backbones tried in this order (EfficientNetB0 first: ten times cheaper than ResNet50 on a CPU).
BACKBONES = {"efficientnetb0": "EfficientNetB0", "resnet50": "ResNet50"}
MIN_CNN_SIZE = 32
# Coates-Ng single-layer network: 6x6 patches every 2 pixels of the 64 px image, 128 k-means filters.
PATCH_SIZE = 6
PATCH_STRIDE = 2
PATCH_CENTROIDS = 128
PATCH_SAMPLES = 20000
PATCHES_PER_IMAGE = 400
PATCH_WHITENING_EPSILON = 0.1
FALLBACK_NAME = "whitened-patch k-means features"
FALLBACK_DESCRIPTION = (
    "whitened-patch k-means features (Coates, Lee and Ng 2011): 6x6 patches of the 64 px letterboxed image, "
    "contrast-normalised and ZCA-whitened, encoded against 128 k-means centroids fitted on training images "
    "(no labels) with the triangle activation, sum-pooled over the four image quadrants (512 values)")


# ----------------------------------------------------------------------------------------------- sampling


def _check_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Raise ValueError when the manifest lacks a needed column or has too few rows; return it."""
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"The manifest lacks the columns {missing}: expected those written by notebook 01.")
    if len(manifest) < MIN_POINTS:
        raise ValueError(f"Feature maps need at least {MIN_POINTS} images, the manifest has {len(manifest)}.")
    return manifest


def stratified_sample(manifest: pd.DataFrame, max_points: int, seed: int) -> pd.DataFrame:
    """Return `max_points` rows (more only to keep one per class), each class in proportion, seeded, in row order."""
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < MIN_POINTS:
        raise ValueError(f"max_points must be an integer of at least {MIN_POINTS}, got {max_points!r}.")
    return sampling.stratified_sample(manifest, max_points, seed, by="label")


def load_images(manifest: pd.DataFrame, size: int) -> np.ndarray:
    """Return the manifest's images letterboxed to size x size (uint8), as the models see them."""
    from alzlib.preprocessing import decode_images

    return decode_images(manifest["path"].astype(str).tolist(), int(size))


# ----------------------------------------------------------------------------------------------- reductions


def reduce_with_pca(features: np.ndarray, seed: int, components: int = PCA_COMPONENTS,
                    standardise: bool = False) -> tuple[np.ndarray, dict]:
    """Return (PCA scores, record); components are capped by the number of points and features."""
    from sklearn.decomposition import PCA

    values = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if standardise:
        spread = values.std(axis=0)
        values = (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    count = int(min(components, values.shape[0] - 1, values.shape[1]))
    pca = PCA(n_components=count, random_state=seed)
    scores = pca.fit_transform(values)
    return scores, {"components": count, "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4),
                    "standardised": standardise, "input_dimensions": int(values.shape[1])}


def tsne_parameters(points: int) -> dict:
    """Return t-SNE settings for `points` points (perplexity below (points - 1) / 3, as t-SNE needs)."""
    if points < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {points}.")
    return {"perplexity": float(min(TSNE_PERPLEXITY, (points - 1) / 3)), "max_iter": TSNE_ITERATIONS,
            "init": "pca", "learning_rate": "auto"}


def umap_parameters(points: int) -> dict:
    """Return UMAP settings for `points` points (fewer neighbours than points)."""
    if points < MIN_POINTS:
        raise ValueError(f"UMAP needs at least {MIN_POINTS} points, got {points}.")
    return {"n_neighbors": int(min(UMAP_NEIGHBOURS, points - 1)), "min_dist": UMAP_MIN_DISTANCE,
            "metric": "euclidean", "n_jobs": 1}


def tsne_map(features: np.ndarray, seed: int) -> np.ndarray:
    """Return the seeded 2-D t-SNE of `features` (points x dimensions)."""
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, random_state=seed, **tsne_parameters(len(features))).fit_transform(features)


def umap_map(features: np.ndarray, seed: int) -> np.ndarray:
    """Return the seeded 2-D UMAP of `features` (single-threaded, the price of a seed)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        # `import umap` imports TensorFlow (for ParametricUMAP) and numba, both of which warn about themselves.
        warnings.simplefilter("ignore")
        import umap

    reducer = umap.UMAP(n_components=2, random_state=seed, **umap_parameters(len(features)))
    return np.asarray(reducer.fit_transform(features), dtype=np.float64)


MAPPERS = {"tsne": tsne_map, "umap": umap_map}


# ----------------------------------------------------------------------------------------------- patch features


def _normalise_patches(patches: np.ndarray) -> np.ndarray:
    """Subtract each patch's mean and divide by its contrast (+10 on a 0-255 scale keeps flat patches flat)."""
    centred = patches - patches.mean(axis=-1, keepdims=True)
    return centred / np.sqrt(patches.var(axis=-1, keepdims=True) + 10.0)


def _patch_windows(images: np.ndarray) -> np.ndarray:
    """Return the strided patch windows of uint8 images: N x rows x columns x PATCH_SIZE^2 (float32 view copy)."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (PATCH_SIZE, PATCH_SIZE), axis=(1, 2))
    windows = windows[:, ::PATCH_STRIDE, ::PATCH_STRIDE]
    return windows.reshape(*windows.shape[:3], PATCH_SIZE * PATCH_SIZE).astype(np.float32)


def fit_patch_dictionary(images: np.ndarray, seed: int) -> dict:
    """Fit the whitening and the k-means centroids on random patches of `images` (no labels); return them."""
    from sklearn.cluster import KMeans

    if len(images) == 0:
        raise ValueError("No images to fit the patch dictionary on.")
    rng = np.random.default_rng(seed)
    windows = np.lib.stride_tricks.sliding_window_view(images, (PATCH_SIZE, PATCH_SIZE), axis=(1, 2))
    # A few hundred patches per image are plenty to describe it; more only slow k-means on small samples.
    samples = min(PATCH_SAMPLES, PATCHES_PER_IMAGE * len(images))
    picks = [rng.integers(0, limit, samples) for limit in windows.shape[:3]]
    patches = _normalise_patches(windows[picks[0], picks[1], picks[2]].reshape(samples, -1).astype(np.float64))
    mean = patches.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    whitening = vectors @ np.diag(1.0 / np.sqrt(np.clip(values, 0, None) + PATCH_WHITENING_EPSILON)) @ vectors.T
    kmeans = KMeans(n_clusters=PATCH_CENTROIDS, n_init=1, max_iter=100, random_state=seed)
    kmeans.fit((patches - mean) @ whitening)
    return {"mean": mean, "whitening": whitening, "centroids": kmeans.cluster_centers_}


def encode_patches(images: np.ndarray, dictionary: dict, batch: int = 64) -> np.ndarray:
    """Return the triangle-encoded, quadrant-pooled patch features of uint8 images (N x 4 * PATCH_CENTROIDS)."""
    centroids = dictionary["centroids"]
    centroid_norms = (centroids ** 2).sum(axis=1)
    features = []
    for start in range(0, len(images), batch):
        windows = _patch_windows(images[start:start + batch]).astype(np.float64)
        whitened = (_normalise_patches(windows) - dictionary["mean"]) @ dictionary["whitening"]
        squared = (whitened ** 2).sum(axis=-1, keepdims=True) + centroid_norms - 2 * whitened @ centroids.T
        distances = np.sqrt(np.clip(squared, 0, None))
        # Triangle activation: a centroid fires when the patch is closer to it than to the average centroid.
        active = np.maximum(0.0, distances.mean(axis=-1, keepdims=True) - distances)
        rows, columns = active.shape[1] // 2, active.shape[2] // 2
        quadrants = [active[:, :rows, :columns], active[:, :rows, columns:], active[:, rows:, :columns],
                     active[:, rows:, columns:]]
        features.append(np.concatenate([quadrant.sum(axis=(1, 2)) for quadrant in quadrants], axis=1))
    return np.concatenate(features)


def patch_features(images: np.ndarray, fit_rows: np.ndarray, seed: int) -> np.ndarray:
    """Return whitened-patch k-means features of uint8 images, the dictionary fitted on `fit_rows` only."""
    fit_rows = np.asarray(fit_rows, dtype=bool)
    dictionary = fit_patch_dictionary(images[fit_rows] if fit_rows.any() else images, seed)
    return encode_patches(images, dictionary)


# ----------------------------------------------------------------------------------------------- CNN embeddings


def _imagenet_file(name: str) -> tuple[str, str, str]:
    """Return (file name, hash, download address) of Keras' ImageNet no-top file of a backbone."""
    # Keras' own constants (not public API): the same file, hash and address keras.applications uses.
    if name == "resnet50":
        from keras.src.applications import resnet

        file_name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return file_name, resnet.WEIGHTS_HASHES["resnet50"][1], resnet.BASE_WEIGHTS_PATH + file_name
    from keras.src.applications import efficientnet

    file_name = "efficientnetb0_notop.h5"
    return file_name, efficientnet.WEIGHTS_HASHES["b0"][1], efficientnet.BASE_WEIGHTS_PATH + file_name


def _fetch_imagenet_file(name: str) -> Path:
    """Return Keras' cached ImageNet no-top file of a backbone, downloading it if needed (raises when it cannot)."""
    import keras

    # Fetching before building fails in about a second offline, without building a model graph for nothing.
    file_name, file_hash, origin = _imagenet_file(name)
    return Path(keras.utils.get_file(file_name, origin=origin, cache_subdir="models", file_hash=file_hash))


def _pooled_backbone(name: str, image_size: int):
    """Return keras.applications' ImageNet backbone `name` with global average pooling (raises when unavailable)."""
    import keras

    constructor = getattr(keras.applications, BACKBONES[name])
    return constructor(include_top=False, weights="imagenet", input_shape=(image_size, image_size, 3),
                       pooling="avg")


def _trained_model_extractor(path: Path) -> tuple[object, dict, dict]:
    """Return (feature model, preprocessing spec, source) for a trained .keras model beside its recipe record."""
    import keras

    from alzlib import models  # noqa: F401  (registers SpatialAttention before loading)

    record_path = path.with_suffix(".json")
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} does not exist: a trained model's recipe record (written beside "
                                f"{path.name} by training) is needed to know its preprocessing.")
    spec = storage.read_json(record_path).get("preprocessing")
    if not isinstance(spec, dict):
        raise ValueError(f"{record_path} has no 'preprocessing' spec: expected a recipe record written by training.")
    model = keras.saving.load_model(path, compile=False)
    layer = _embedding_layer(model)
    extractor = keras.Model(model.inputs, layer.output)
    source = {"kind": "trained_model", "model": f"{path.name}, layer {layer.name!r}", "weights": str(path),
              "reason": "WEIGHTS names a trained model", "image_size": int(spec["image_size"])}
    return extractor, spec, source


def _embedding_layer(model):
    """Return the layer whose output is the model's image embedding: 'global_pool', else the last 2-D hidden layer."""
    names = {layer.name: layer for layer in model.layers}
    if "global_pool" in names:
        return names["global_pool"]
    for layer in reversed(model.layers[:-1]):
        if len(layer.output.shape) == 2:
            return layer
    raise ValueError(f"Model {model.name!r} has no 2-D hidden layer to use as an embedding.")


def _weights_file_extractor(path: Path, image_size: int) -> tuple[object, dict, dict]:
    """Return the backbone whose Keras ImageNet file `path` is (checked by hash), pooled; raise ValueError if none."""
    from alzlib import models, preprocessing

    errors = []
    for name in BACKBONES:
        try:
            models.stage_weights_file(name, path)
        except ValueError as error:
            errors.append(str(error))
            continue
        source = {"kind": "imagenet", "model": f"{BACKBONES[name]} (ImageNet, include_top=False, pooling='avg')",
                  "weights": str(path), "reason": "WEIGHTS names Keras' ImageNet file", "image_size": image_size}
        return _pooled_backbone(name, image_size), preprocessing.preprocessing_spec(name, image_size), source
    raise ValueError(f"WEIGHTS file {path} is neither a trained .keras model nor Keras' ImageNet no-top file of "
                     f"{' or '.join(BACKBONES.values())}: {' | '.join(errors)}")


def _imagenet_extractor(image_size: int) -> tuple[object | None, dict | None, dict]:
    """Return the first ImageNet backbone whose weights load (cache or download), or None and every failure."""
    from alzlib import preprocessing

    attempts = []
    for name in BACKBONES:
        try:
            _fetch_imagenet_file(name)
            backbone = _pooled_backbone(name, image_size)
        # keras.utils.get_file raises a plain Exception (wrapping URLError) when it cannot download.
        except Exception as error:  # noqa: BLE001
            attempts.append({"backbone": BACKBONES[name], "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        source = {"kind": "imagenet", "model": f"{BACKBONES[name]} (ImageNet, include_top=False, pooling='avg')",
                  "weights": "imagenet", "reason": "ImageNet weights loaded (Keras cache or download)",
                  "image_size": image_size, "attempts": attempts}
        return backbone, preprocessing.preprocessing_spec(name, image_size), source
    return None, None, {"kind": "unavailable", "attempts": attempts,
                        "reason": "ImageNet weights could not be loaded for " + ", ".join(BACKBONES.values()) +
                                  " (no Keras cache, no download); put the no-top file in ~/.keras/models or pass "
                                  "its path as WEIGHTS"}


def load_embedding_model(weights: str | os.PathLike | None, image_size: int) -> tuple[object | None, dict | None, dict]:
    """Return (feature model or None, preprocessing spec, source record) for the WEIGHTS parameter.

    weights: None or 'imagenet' (Keras cache or download), 'none' (no CNN: the fallback), a trained model
    `<name>.keras` with its recipe record beside it, or Keras' ImageNet no-top .h5 file.
    """
    image_size = max(MIN_CNN_SIZE, int(image_size))
    if weights == "none":
        return None, None, {"kind": "unavailable", "reason": "WEIGHTS='none' asks for no pretrained weights",
                            "attempts": []}
    if weights in (None, "imagenet"):
        return _imagenet_extractor(image_size)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"WEIGHTS file {path} does not exist: expected a trained .keras model or Keras' "
                                f"ImageNet no-top .h5 file.")
    if path.suffix == ".keras":
        return _trained_model_extractor(path)
    return _weights_file_extractor(path, image_size)


def model_embeddings(extractor, spec: dict, manifest: pd.DataFrame, batch_size: int = 32) -> np.ndarray:
    """Return the extractor's embedding of every manifest image, preprocessed exactly as `spec` says."""
    from alzlib import preprocessing

    images = load_images(manifest, int(spec["image_size"]))
    embeddings = [np.asarray(backend.predict(extractor, preprocessing.prepare_images(images[start:start + batch_size],
                                                                                     spec), batch_size),
                             dtype=np.float64)
                  for start in range(0, len(images), batch_size)]
    return np.concatenate(embeddings).reshape(len(images), -1)


def embedding_features(manifest: pd.DataFrame, pixels: np.ndarray, weights, image_size: int,
                       seed: int) -> tuple[np.ndarray, dict]:
    """Return (embedding of every image, source record): a CNN where weights allow, else the stated fallback."""
    extractor, spec, source = load_embedding_model(weights, image_size)
    if extractor is not None:
        name = "trained_model" if source["kind"] == "trained_model" else "imagenet_cnn"
        source = {**source, "feature_space": name, "statement": f"The embedding view uses {source['model']}."}
        return model_embeddings(extractor, spec, manifest), source
    fit_rows = (manifest["split"].astype(str) == "train").to_numpy()
    source = {**source, "kind": "fallback", "feature_space": "patch_kmeans", "model": FALLBACK_DESCRIPTION,
              "dictionary_fitted_on": "train split" if fit_rows.any() else "all sampled images (no train split)",
              "statement": (f"No CNN embedding was used: {source['reason']}. The embedding view instead uses "
                            f"{FALLBACK_NAME}, a fixed unsupervised feature extractor fitted on this data's training "
                            f"images; it describes local edges and texture with coarse layout and is not an "
                            f"ImageNet or trained-network embedding.")}
    return patch_features(pixels, fit_rows, seed), source


# ----------------------------------------------------------------------------------------------- neighbours


def neighbour_statistics(features: np.ndarray, subjects: np.ndarray, labels: np.ndarray,
                         neighbours: int = NEIGHBOURS) -> dict:
    """Return how often a point's nearest neighbours share its subject vs its class, against chance, and silhouettes.

    The 1-NN class accuracy is computed twice: with every other point allowed (slice-level) and with the point's own
    subject excluded (subject-level); the gap is what a slice-level split would add to a score.
    """
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    subjects, labels = np.asarray(subjects).astype(str), np.asarray(labels).astype(str)
    count = len(features)
    k = int(min(neighbours, count - 1))
    if k < 1:
        raise ValueError(f"Neighbour statistics need at least 2 points, got {count}.")
    order = NearestNeighbors(n_neighbors=count).fit(features).kneighbors(features, return_distance=False)
    order = np.array([row[row != index] for index, row in enumerate(order)])  # drop each point itself
    nearest = order[:, :k]
    same_subject = subjects[nearest] == subjects[:, None]
    other_subject_rows = [row[subjects[row] != subjects[index]] for index, row in enumerate(order)]
    cross_subject = np.array([labels[row[0]] if len(row) else "" for row in other_subject_rows])
    subject_sizes = pd.Series(subjects).map(pd.Series(subjects).value_counts()).to_numpy()
    class_sizes = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    return {
        "points": count, "neighbours": k,
        "same_subject_share": round(float(same_subject.mean()), 4),
        "same_subject_chance": round(float(np.mean((subject_sizes - 1) / (count - 1))), 4),
        # With few slices per subject in the sample, not all k neighbours can be the same subject.
        "same_subject_ceiling": round(float(np.mean(np.minimum(subject_sizes - 1, k) / k)), 4),
        "nearest_is_same_subject": _share(same_subject[:, 0], subject_sizes > 1),
        "same_class_share": round(float((labels[nearest] == labels[:, None]).mean()), 4),
        "same_class_chance": round(float(np.mean((class_sizes - 1) / (count - 1))), 4),
        "nearest_neighbour_balanced_accuracy": round(balanced_accuracy(labels, labels[order[:, 0]]), 4),
        "nearest_other_subject_balanced_accuracy": round(balanced_accuracy(labels, cross_subject), 4),
        "silhouette_by_subject": _silhouette(features, subjects, silhouette_score),
        "silhouette_by_class": _silhouette(features, labels, silhouette_score),
    }


def _share(hits: np.ndarray, eligible: np.ndarray) -> float | None:
    """Return the share of hits among eligible points (None when none is eligible)."""
    return round(float(hits[eligible].mean()), 4) if eligible.any() else None


def _silhouette(features: np.ndarray, groups: np.ndarray, scorer) -> float | None:
    """Return the silhouette of `groups` (None when it is undefined: one group or one point per group)."""
    distinct = len(np.unique(groups))
    if not 2 <= distinct <= len(groups) - 1:
        return None
    return round(float(scorer(features, groups)), 4)


def neighbour_sentence(statistics: dict, feature_name: str) -> str:
    """Return the sentence that reads a neighbour-statistics record."""
    return (f"In {feature_name} space, {statistics['same_subject_share']:.0%} of each image's "
            f"{statistics['neighbours']} nearest neighbours are slices of the same subject (chance "
            f"{statistics['same_subject_chance']:.0%}) and {statistics['same_class_share']:.0%} share its class "
            f"(chance {statistics['same_class_chance']:.0%}). The nearest neighbour's class matches with balanced "
            f"accuracy {statistics['nearest_neighbour_balanced_accuracy']:.2f} when the subject's other slices may be "
            f"used (a slice-level split) and {statistics['nearest_other_subject_balanced_accuracy']:.2f} when they "
            f"may not (a subject-level split).")


# ----------------------------------------------------------------------------------------------- figures


def _subject_colours(subjects: pd.Series, seed: int) -> np.ndarray:
    """Return one colour per point, fixed per subject; subjects are shuffled so neighbours rarely share a colour."""
    from matplotlib import colormaps

    names = np.array(sorted(subjects.astype(str).unique()))
    rank = dict(zip(names[np.random.default_rng(seed).permutation(len(names))], range(len(names))))
    palette = colormaps["tab20"].colors
    return np.array([palette[rank[name] % len(palette)] for name in subjects.astype(str)])


def feature_map_figure(embeddings: pd.DataFrame, title: str, data_label: str, seed: int = 0) -> Figure:
    """Return a grid: one row per method (t-SNE, UMAP), coloured by class (left) and by subject (right)."""
    methods = [method for method in MAPPERS if method in set(embeddings["method"])]
    figure = Figure(figsize=(11, 4.8 * len(methods)), layout="constrained")
    axes = figure.subplots(len(methods), 2, squeeze=False)
    for row, method in enumerate(methods):
        points = embeddings[embeddings["method"] == method]
        by_class, by_subject = axes[row]
        for label, group in points.groupby("label", sort=False):
            by_class.scatter(group["x"], group["y"], s=9, alpha=0.8, label=str(label))
        by_class.legend(fontsize=7, markerscale=2)
        by_class.set_title(f"{method.upper()} coloured by class", fontsize=10)
        order = ["subject_id", "slice_index"] if "slice_index" in points.columns else ["subject_id"]
        for _, group in points.sort_values(order, na_position="last").groupby("subject_id", sort=False):
            by_subject.plot(group["x"], group["y"], color="grey", linewidth=0.4, alpha=0.5)
        by_subject.scatter(points["x"], points["y"], s=9, c=_subject_colours(points["subject_id"], seed))
        by_subject.set_title(f"{method.upper()} coloured by subject ({points['subject_id'].nunique()} subjects, "
                             f"colours repeat; lines join one subject's slices)", fontsize=9)
        for axis in (by_class, by_subject):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"{title} — {data_label}")
    return figure


# ----------------------------------------------------------------------------------------------- run


def feature_maps(features: np.ndarray, sample: pd.DataFrame, feature_space: str, seed: int) -> pd.DataFrame:
    """Return t-SNE and UMAP maps of `features`: rows of path, subject_id, label, split, features, method, x, y."""
    columns = ["path", "subject_id", "label", "split", *(["slice_index"] if "slice_index" in sample.columns else [])]
    frames = []
    for method, mapper in MAPPERS.items():
        coordinates = mapper(features, seed)
        frames.append(sample[columns].reset_index(drop=True).assign(
            features=feature_space, method=method, x=coordinates[:, 0], y=coordinates[:, 1]))
    return pd.concat(frames, ignore_index=True)


def run_features(manifest: pd.DataFrame, out_dir: str | os.PathLike, data_label: str, seed: int, max_points: int,
                 weights: str | os.PathLike | None = None, cnn_image_size: int = 96) -> dict:
    """Write the feature maps, embeddings and their record under `out_dir`; return the record.

    Args:
        manifest: the manifest of notebook 01 (every split; a stratified seeded sample is mapped).
        weights: the WEIGHTS parameter (see load_embedding_model); cnn_image_size: the CNN's input size.
    """
    _check_manifest(manifest)
    out_dir = Path(out_dir)
    sample = stratified_sample(manifest.reset_index(drop=True), max_points, seed).reset_index(drop=True)
    pixels = load_images(sample, PIXEL_SIZE)
    pixel_scores, pixel_pca = reduce_with_pca(pixels.reshape(len(pixels), -1) / 255.0, seed)
    embedding, source = embedding_features(sample, pixels, weights, cnn_image_size, seed)
    embedding_scores, embedding_pca = reduce_with_pca(embedding, seed, standardise=True)
    spaces = {"pixels": (pixel_scores, pixel_pca, f"raw pixels ({PIXEL_SIZE} px, PCA)"),
              source["feature_space"]: (embedding_scores, embedding_pca, _space_title(source))}
    frames, statistics, written = [], {}, []
    for name, (scores, _, title) in spaces.items():
        maps = feature_maps(scores, sample, name, seed)
        frames.append(maps)
        statistics[name] = neighbour_statistics(scores, sample["subject_id"], sample["label"])
        figure = feature_map_figure(maps, title, data_label, seed)
        written.append(storage.save_figure(figure, out_dir / f"map_{name}.png"))
    written.append(storage.write_parquet(out_dir / "embeddings.parquet", pd.concat(frames, ignore_index=True)))
    table = pd.DataFrame([{"features": name, **values} for name, values in statistics.items()])
    storage.write_csv(out_dir / "neighbour_statistics.csv", table)
    record = _record(sample, manifest, data_label, seed, max_points, spaces, source, statistics)
    record["files"] = sorted([path.name for path in written] + ["neighbour_statistics.csv", "summary.json"])
    storage.write_json(out_dir / "summary.json", record)
    return record


def _space_title(source: dict) -> str:
    """Return the plot title of the embedding feature space, saying plainly when it is the fallback."""
    if source["kind"] == "fallback":
        return f"{FALLBACK_NAME} (FALLBACK: no CNN weights available), PCA"
    return f"{source['model']} embedding, PCA"


def _record(sample: pd.DataFrame, manifest: pd.DataFrame, data_label: str, seed: int, max_points: int,
            spaces: dict, source: dict, statistics: dict) -> dict:
    """Return the JSON record of a feature-map run: sample, methods, parameters, embedding source, statistics."""
    points = len(sample)
    return {
        "data_label": data_label, "seed": seed, "points": points, "images_available": int(len(manifest)),
        "max_points": int(max_points), "sample": "stratified by class, seeded; every split included",
        "points_per_class": sample["label"].astype(str).value_counts().to_dict(),
        "subjects": int(sample["subject_id"].nunique()),
        "feature_spaces": {name: {"title": title, "pca": pca} for name, (_, pca, title) in spaces.items()},
        "pixel_preprocessing": f"letterboxed to {PIXEL_SIZE}x{PIXEL_SIZE} (aspect kept, black padding), scaled to 0-1",
        "methods": {"tsne": {"library": "sklearn.manifold.TSNE", **tsne_parameters(points)},
                    "umap": {"library": "umap-learn", **umap_parameters(points),
                             "note": "seeded UMAP runs single-threaded"}},
        "embedding_source": source,
        "neighbour_statistics": statistics,
        "statements": [source["statement"],
                       *(neighbour_sentence(values, name) for name, values in statistics.items())],
    }
