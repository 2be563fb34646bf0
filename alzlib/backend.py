"""Keras backend: which one runs (TensorFlow, JAX or PyTorch), what its devices allow, and the few per-backend jobs.

Everything else in alzlib goes through `keras` and `keras.ops` only. What Keras has no neutral API for lives here:
listing GPUs, the multi-GPU engine (tf.distribute for TensorFlow, keras.distribution.DataParallel for JAX),
op determinism, and the gradient of a class score with respect to an inner layer's output (Grad-CAM).

The backend is chosen the Keras way, by the KERAS_BACKEND environment variable (`run_all.py --backend NAME` sets it
for every notebook's kernel); TensorFlow is the default. Nothing here imports a backend at module import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"
# The pip extra that installs each backend (pyproject.toml); `gpu` is TensorFlow's CUDA build.
EXTRAS = {"tensorflow": "cpu", "jax": "jax", "torch": "torch"}
# bfloat16 needs Ampere (compute capability 8.0) or newer; older GPUs get float16 with loss scaling.
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)
# Batch scaling, where a recipe allows it: one doubling per this much GPU memory at 224 px (the recipe's batch of 32
# for ResNet50 under mixed precision fits in well under 8 GiB), at most MAX_BATCH_SCALE times the recipe's batch.
GIB_PER_BATCH_DOUBLING_AT_224 = 16.0
MAX_BATCH_SCALE = 8
# Measured on the 2-core CPU (bench/backends.py): several train steps per compiled call cut Python overhead per step
# on TensorFlow and JAX; the PyTorch trainer accepts only 1. On a GPU Keras' default of 1 is kept, XLA fusing instead.
CPU_STEPS_PER_EXECUTION = 4


class BackendMissing(ImportError):
    """Raised when the Keras backend asked for is not installed; its message names the pip extra to install."""


def requested_backend() -> str:
    """Return the backend Keras will use (or uses): KERAS_BACKEND, else ~/.keras/keras.json, else tensorflow."""
    import sys

    if "keras" in sys.modules and hasattr(sys.modules["keras"], "backend"):
        return sys.modules["keras"].backend.backend()
    name = os.environ.get("KERAS_BACKEND", "").strip()
    if name:
        return name
    settings = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return json.loads(settings.read_text()).get("backend", DEFAULT_BACKEND)
    except (OSError, ValueError, AttributeError):
        return DEFAULT_BACKEND


def missing_backend_message(name: str) -> str:
    """Return the one-line error for a backend that is not installed."""
    return (f"Keras backend {name!r} is not installed: pip install -e \".[{EXTRAS[name]}]\" (or set KERAS_BACKEND "
            f"to one of {', '.join(BACKENDS)} that is installed).")


def check_backend(name: str | None = None) -> str:
    """Return `name` (default: the requested backend) after checking it is known and installed."""
    name = name or requested_backend()
    if name not in BACKENDS:
        raise ValueError(f"Unknown Keras backend {name!r}: expected one of {', '.join(BACKENDS)}.")
    if importlib.util.find_spec(name) is None:
        raise BackendMissing(missing_backend_message(name))
    return name


def active_backend() -> str:
    """Return the backend Keras runs on (imports Keras)."""
    import keras

    return keras.backend.backend()


def tensorboard_available() -> bool:
    """True when TensorBoard logs can be written: Keras' TensorBoard callback writes through tf.summary."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorflow"))


# ----------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Gpu:
    """One visible GPU as the backend reports it."""

    name: str
    memory_gib: float | None = None
    compute_capability: tuple[int, int] | None = None


def _capability(text) -> tuple[int, int] | None:
    """Return (major, minor) from '8.0', (8, 0) or None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    major, _, minor = str(text).partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() else None


def _tensorflow_gpus() -> list[Gpu]:
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(Gpu(details.get("device_name", device.name), None, _capability(details.get("compute_capability"))))
    return gpus


def _jax_gpus() -> list[Gpu]:
    import jax

    gpus = []
    for device in jax.devices():
        if device.platform not in ("gpu", "cuda", "rocm"):
            continue
        stats = device.memory_stats() or {}
        memory = stats.get("bytes_limit")
        gpus.append(Gpu(device.device_kind, round(memory / 2**30, 1) if memory else None,
                        _capability(getattr(device, "compute_capability", None))))
    return gpus


def _torch_gpus() -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():
        return []
    properties = [torch.cuda.get_device_properties(index) for index in range(torch.cuda.device_count())]
    return [Gpu(item.name, round(item.total_memory / 2**30, 1), (item.major, item.minor)) for item in properties]


def visible_gpus(name: str | None = None) -> list[Gpu]:
    """Return the GPUs backend `name` (default: the requested one) sees; [] when it is not installed."""
    name = name or requested_backend()
    listing = {"tensorflow": _tensorflow_gpus, "jax": _jax_gpus, "torch": _torch_gpus}.get(name)
    try:
        return listing() if listing else []
    except ImportError:
        return []


# ----------------------------------------------------------------------------------------------- GPU settings


@dataclass(frozen=True)
class ExecutionSettings:
    """How a model trains on this backend and device: precision, compilation, batch scale and replicas."""

    backend: str
    devices: str
    dtype_policy: str
    loss_scaling: bool
    jit_compile: bool
    steps_per_execution: int
    replicas: int
    batch_scale: int
    reason: str = ""

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict (for the recipe record)."""
        return asdict(self)


def precision_policy(gpus: list[Gpu]) -> str:
    """Return Keras' dtype policy for `gpus`: mixed_bfloat16 when every GPU supports it, mixed_float16 on older
    GPUs (Keras wraps the optimizer in a LossScaleOptimizer under it), float32 on a CPU."""
    if not gpus:
        return "float32"
    capabilities = [gpu.compute_capability for gpu in gpus]
    if all(capability is not None and capability >= BFLOAT16_COMPUTE_CAPABILITY for capability in capabilities):
        return "mixed_bfloat16"
    return "mixed_float16"


def batch_scale(gpus: list[Gpu], image_size: int, allowed: bool) -> int:
    """Return how many times the recipe's per-replica batch fits the smallest GPU's memory (a power of two, 1 to
    MAX_BATCH_SCALE); 1 on a CPU, when the memory is unknown, or when the recipe does not allow scaling."""
    memories = [gpu.memory_gib for gpu in gpus]
    if not allowed or not gpus or any(memory is None for memory in memories):
        return 1
    pixels_ratio = (224 / max(int(image_size), 1)) ** 2
    doublings = int(min(memories) * pixels_ratio // GIB_PER_BATCH_DOUBLING_AT_224)
    scale = 1
    while scale * 2 <= min(doublings, MAX_BATCH_SCALE):
        scale *= 2
    return scale


def execution_settings(backend: str, gpus: list[Gpu], image_size: int, batch_scaling_allowed: bool,
                       replicas: int = 1) -> ExecutionSettings:
    """Decide precision, compilation, steps per call and batch scale from the backend and its GPUs (pure: testable
    with made-up devices).

    Compilation: XLA under TensorFlow on one GPU (tf.distribute runs without it) and always under JAX (Keras' JAX
    trainer jit-compiles by default; without it every op dispatches from Python); torch.compile stays off, as it is
    not measured to help here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown Keras backend {backend!r}: expected one of {', '.join(BACKENDS)}.")
    policy = precision_policy(gpus)
    jit = {"tensorflow": bool(gpus) and replicas == 1, "jax": True, "torch": False}[backend]
    steps = 1 if gpus or backend == "torch" else CPU_STEPS_PER_EXECUTION
    scale = batch_scale(gpus, image_size, batch_scaling_allowed)
    devices = f"{len(gpus)} GPU(s): {', '.join(sorted({gpu.name for gpu in gpus}))}" if gpus else "CPU"
    reason = (f"{policy}{' with loss scaling' if policy == 'mixed_float16' else ''}; jit_compile={jit}; batch x{scale}"
              f" ({'scaled to the smallest GPU memory' if scale > 1 else 'recipe batch'})")
    return ExecutionSettings(backend, devices, policy, policy == "mixed_float16", jit, steps, replicas, scale, reason)


# ----------------------------------------------------------------------------------------------- distribution


@dataclass
class Distribution:
    """The backend's multi-device engine for one run: its name, replica count and the scope models are built in."""

    name: str
    replicas: int
    scope: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext, repr=False)
    note: str = ""


def cluster_config() -> dict:
    """Return the `cluster` of the TF_CONFIG environment variable ({} when unset), naming it when it is not JSON."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                         '"index": 0}}.') from error
    if not isinstance(value, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {text[:80]!r}.")
    return value.get("cluster") or {}


def _tensorflow_distribution() -> Distribution:
    import tensorflow as tf

    if cluster_config():
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_physical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    return Distribution(type(strategy).__name__, strategy.num_replicas_in_sync, strategy.scope)


def _jax_distribution() -> Distribution:
    import jax
    import keras

    gpus = [device for device in jax.devices() if device.platform in ("gpu", "cuda", "rocm")]
    if len(gpus) < 2:
        return Distribution("single device", 1)
    engine = keras.distribution.DataParallel(devices=gpus)
    return Distribution("DataParallel", len(gpus), engine.scope)


def _torch_distribution() -> Distribution:
    return Distribution("single device", 1, note="Keras' PyTorch trainer has no multi-GPU engine in fit(); the run "
                                                 "uses one GPU (use the TensorFlow or JAX backend for several)")


def distribution() -> Distribution:
    """Return the active backend's multi-device engine: tf.distribute (Mirrored over several GPUs, MultiWorker when
    TF_CONFIG names a cluster) for TensorFlow, keras.distribution.DataParallel over several GPUs for JAX, one
    device for PyTorch."""
    return {"tensorflow": _tensorflow_distribution, "jax": _jax_distribution,
            "torch": _torch_distribution}[active_backend()]()


# ----------------------------------------------------------------------------------------------- prediction


def predict(model, inputs, batch_size: int = 32):
    """Return model.predict(inputs) (silent), the inputs padded to whole batches on JAX and the outputs trimmed.

    jax.jit compiles once per input shape: a last, partial batch of each new length would compile the model again
    (seconds for ResNet50 on a CPU). Predictions are row by row in inference mode, so the padding changes none.
    """
    import numpy as np

    inputs = np.asarray(inputs)
    count, remainder = len(inputs), len(inputs) % batch_size
    if active_backend() != "jax" or remainder == 0:
        return model.predict(inputs, batch_size=batch_size, verbose=0)
    padding = np.zeros((batch_size - remainder, *inputs.shape[1:]), dtype=inputs.dtype)
    outputs = model.predict(np.concatenate([inputs, padding]), batch_size=batch_size, verbose=0)
    if isinstance(outputs, (list, tuple)):
        return [output[:count] for output in outputs]
    return outputs[:count]


# ----------------------------------------------------------------------------------------------- determinism


def enable_determinism() -> str:
    """Switch the active backend to deterministic ops where it has a switch; return what was done."""
    backend = active_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        return "tf.config.experimental.enable_op_determinism()"
    if backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        return "torch.use_deterministic_algorithms(True, warn_only=True)"
    # XLA on a CPU is deterministic; on a GPU the flag must be set before JAX starts, so it is only reported here.
    return "JAX: deterministic on CPU; on a GPU set XLA_FLAGS=--xla_gpu_deterministic_ops=true before starting"


# ----------------------------------------------------------------------------------------------- Grad-CAM gradients


@contextlib.contextmanager
def _shifted_output(layer, shift) -> Iterator[None]:
    """Add `shift` to `layer`'s output for the block (JAX differentiates with respect to that shift)."""
    original = layer.call
    layer.__dict__["call"] = lambda *args, **kwargs: original(*args, **kwargs) + shift
    try:
        yield
    finally:
        layer.__dict__.pop("call", None)


def _tensorflow_gradient_function(model, target_layer, compiled: bool):
    import tensorflow as tf

    def run(inputs, chosen):
        with tf.GradientTape() as tape:
            features, probabilities, scores = model(inputs, training=False)
            chosen = tf.where(chosen < 0, tf.argmax(probabilities, axis=1, output_type=tf.int32), chosen)
            selected = tf.gather(scores, chosen, axis=1, batch_dims=1)
        return features, tape.gradient(selected, features), probabilities, chosen

    graph = None

    def call(images, chosen):
        nonlocal graph
        if compiled and graph is None:
            graph = tf.function(run, input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.float32),
                                                      tf.TensorSpec([None], tf.int32)])
        outputs = (graph or run)(tf.convert_to_tensor(images, tf.float32), tf.convert_to_tensor(chosen, tf.int32))
        return tuple(None if item is None else item.numpy() for item in outputs)

    return call


def _jax_gradient_function(model, target_layer, compiled: bool):
    import jax
    import jax.numpy as jnp
    import numpy as np

    # JAX differentiates functions, not tensors: the gradient at the target layer's output is the gradient with
    # respect to a zero shift added to that output. Weights are arguments, so a compiled function reads new ones.
    def selected_scores(shift, trainable, non_trainable, inputs, chosen):
        with _shifted_output(target_layer, shift):
            (features, probabilities, scores), _ = model.stateless_call(trainable, non_trainable, inputs,
                                                                        training=False)
        chosen = jnp.where(chosen < 0, jnp.argmax(probabilities, axis=1).astype(jnp.int32), chosen)
        selected = jnp.take_along_axis(scores, chosen[:, None], axis=1)[:, 0]
        return jnp.sum(selected.astype(jnp.float32)), (features, probabilities, chosen)

    # Always compiled, whatever `compiled` says: measured on 2 cores (ResNet50, 8 images at 64 px), the jitted pass
    # took 7.9 s the first time and 3.1 s after, the eager one 20.7 s and 6.4 s.
    gradient = jax.jit(jax.grad(selected_scores, has_aux=True))

    def call(images, chosen):
        # Padded to a power of two: each new batch length would compile again.
        count = len(images)
        padded = 1 << max(count - 1, 0).bit_length()
        images = np.pad(np.asarray(images, np.float32), [(0, padded - count)] + [(0, 0)] * (np.ndim(images) - 1))
        chosen = np.pad(np.asarray(chosen, np.int32), (0, padded - count), constant_values=-1)
        shift = jnp.zeros((padded, *model.outputs[0].shape[1:]), dtype=target_layer.compute_dtype)
        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]
        gradients, (features, probabilities, chosen) = gradient(shift, trainable, non_trainable, images, chosen)
        return tuple(np_array(item)[:count] for item in (features, gradients, probabilities, chosen))

    return call


def _torch_gradient_function(model, target_layer, compiled: bool):
    import keras
    import torch

    def call(images, chosen):
        # The inputs require a gradient so that a frozen backbone's features are still on the autograd graph.
        inputs = keras.ops.convert_to_tensor(images, "float32").requires_grad_(True)
        chosen = keras.ops.convert_to_tensor(chosen, "int32")
        with torch.enable_grad():
            features, probabilities, scores = model(inputs, training=False)
            chosen = torch.where(chosen < 0, torch.argmax(probabilities, dim=1).to(torch.int32), chosen)
            selected = torch.gather(scores, 1, chosen.long()[:, None])[:, 0]
            gradients = torch.autograd.grad(selected.sum(), features, allow_unused=True)[0]
        return tuple(None if item is None else np_array(item) for item in (features, gradients, probabilities,
                                                                            chosen))

    return call


def np_array(tensor):
    """Return a backend tensor as a NumPy array (detached, on the host)."""
    import keras

    return keras.ops.convert_to_numpy(tensor)


def class_score_gradient_function(model, target_layer, compiled: bool = False):
    """Return f(images, chosen) -> (features, gradients, probabilities, chosen) as NumPy arrays.

    `model` maps images to (target-layer features, probabilities, class scores); `target_layer` is the layer whose
    output the features are; `chosen` holds a class index per image, or -1 for the predicted class. The gradients
    are those of each image's chosen class score with respect to its features (None when the score does not
    depend on them). `compiled` traces the pass once under TensorFlow (tf.function); JAX always compiles (faster
    even for one pass), PyTorch runs eagerly.
    """
    builders = {"tensorflow": _tensorflow_gradient_function, "jax": _jax_gradient_function,
                "torch": _torch_gradient_function}
    return builders[active_backend()](model, target_layer, compiled)
