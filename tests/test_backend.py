"""Tests of alzlib.backend: backend choice, the missing-backend error, and the GPU settings decided from made-up
devices (no GPU needed)."""

import importlib.util

import pytest

from alzlib import backend

A100 = backend.Gpu("NVIDIA A100-SXM4-40GB", 39.4, (8, 0))
V100 = backend.Gpu("Tesla V100-SXM2-16GB", 15.8, (7, 0))


def test_keras_backend_variable_chooses_the_backend_and_tensorflow_is_the_default(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.modules", {key: value for key, value in __import__("sys").modules.items()
                                        if key != "keras"})
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert backend.requested_backend() == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    assert backend.requested_backend() == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert backend.requested_backend() == "torch"


def test_a_missing_backend_names_the_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "jax" else real(name))
    with pytest.raises(backend.BackendMissing, match=r'pip install -e "\.\[jax\]"') as caught:
        backend.check_backend("jax")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="Unknown Keras backend 'mxnet'"):
        backend.check_backend("mxnet")
    assert backend.check_backend("tensorflow") == "tensorflow"


def test_precision_is_bfloat16_from_ampere_float16_before_and_float32_on_a_cpu():
    assert backend.precision_policy([A100, A100]) == "mixed_bfloat16"
    assert backend.precision_policy([A100, V100]) == "mixed_float16"  # the oldest GPU decides
    assert backend.precision_policy([backend.Gpu("unknown")]) == "mixed_float16"
    assert backend.precision_policy([]) == "float32"


def test_batch_scale_follows_the_smallest_gpu_memory_and_image_size():
    assert backend.batch_scale([A100], 224, allowed=True) == 2
    assert backend.batch_scale([A100], 64, allowed=True) == backend.MAX_BATCH_SCALE
    assert backend.batch_scale([A100, V100], 224, allowed=True) == 1
    assert backend.batch_scale([A100], 224, allowed=False) == 1
    assert backend.batch_scale([backend.Gpu("no memory figure")], 224, allowed=True) == 1
    assert backend.batch_scale([], 224, allowed=True) == 1


def test_execution_settings_per_backend_and_device():
    cpu_tf = backend.execution_settings("tensorflow", [], 64, True)
    assert (cpu_tf.dtype_policy, cpu_tf.jit_compile, cpu_tf.steps_per_execution) == ("float32", False, 4)
    assert backend.execution_settings("jax", [], 64, True).jit_compile  # JAX always compiles its step
    torch_gpu = backend.execution_settings("torch", [V100], 224, True)
    assert (torch_gpu.dtype_policy, torch_gpu.loss_scaling, torch_gpu.jit_compile) == ("mixed_float16", True, False)
    assert backend.execution_settings("torch", [], 64, True).steps_per_execution == 1  # Keras' torch trainer: 1 only
    mirrored = backend.execution_settings("tensorflow", [A100, A100], 224, True, replicas=2)
    assert not mirrored.jit_compile and mirrored.replicas == 2 and "2 GPU(s)" in mirrored.devices
    assert backend.execution_settings("jax", [A100], 224, True).to_dict()["batch_scale"] == 2
    with pytest.raises(ValueError, match="Unknown Keras backend"):
        backend.execution_settings("mxnet", [], 64, True)


def test_cluster_config_reads_tf_config_and_names_bad_json(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert backend.cluster_config() == {}
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}')
    assert backend.cluster_config() == {"worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        backend.cluster_config()


def test_this_machine_has_no_gpu_on_the_active_backend_or_lists_them():
    gpus = backend.visible_gpus()
    assert all(isinstance(gpu, backend.Gpu) for gpu in gpus)
    assert backend.distribution().replicas >= 1
