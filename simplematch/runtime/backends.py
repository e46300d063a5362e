"""Inference backends of the torch-free runtime: onnxruntime (CPU / CUDA) and native TensorRT engines.

Every backend turns ``(B, 3, S, S)`` float32 images in [0, 1] into ``(B, C, S/4, S/4)`` float32 features
(the :mod:`simplematch.metadata` contract) and reports the execution provider that *actually* runs them.
Each validates its model before the first image: metadata present, input side == metadata ``img_size``,
output map side == ``img_size / stride``. Every failure a user can fix is a :class:`SimpleMatchError`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from simplematch.errors import SimpleMatchError
from simplematch.metadata import ModelMeta

ONNX_SUFFIXES = (".onnx",)
# Names of the one-graph model's I/O (simplematch.export.one_graph, which imports torch; repeated here).
MATCH_INPUTS = ("src_image", "tgt_image", "src_kps", "kps_valid")
MATCH_OUTPUTS = ("tgt_kps", "peak_cos", "peak_mass", "features")
ENGINE_SUFFIXES = (".engine", ".plan")
# "tensorrt" / "tensorrt-fp16": an .onnx model through onnxruntime's TensorRT execution provider (engine
# built and cached by onnxruntime next to the model); for a native .engine they mean "cuda".
DEVICES = ("cpu", "cuda", "tensorrt", "tensorrt-fp16")
TRT_DEVICES = ("tensorrt", "tensorrt-fp16")
GPU_INSTALL_FIX = (
    "install simplematch[gpu] (pip install onnxruntime-gpu) on a machine with an NVIDIA GPU, "
    "or pass --device cpu"
)
TRT_INSTALL_FIX = (
    "on a machine with an NVIDIA GPU run `pip install 'simplematch[trt]' cuda-python` (TensorRT wheels from "
    "NVIDIA, https://docs.nvidia.com/deeplearning/tensorrt/), or run the .onnx model instead"
)


class GraphMatches(NamedTuple):
    """What :meth:`Backend.match` returns for B pairs of N keypoints (one-graph model).

    ``target_kps`` (B, N, 2) in the model frame (NaN where invalid), ``peak_cos`` / ``peak_mass`` (B, N)
    (0 where invalid), ``src_features`` / ``tgt_features`` (B, C, h, w): the graph's own feature maps.
    """

    target_kps: np.ndarray
    peak_cos: np.ndarray
    peak_mass: np.ndarray
    src_features: np.ndarray
    tgt_features: np.ndarray


@runtime_checkable
class Backend(Protocol):
    """What the :class:`~simplematch.runtime.matcher.Matcher` needs from an inference engine."""

    path: Path
    meta: ModelMeta
    provider: str  # the execution provider that really runs the model, e.g. "CPUExecutionProvider"
    runtime: str  # "onnxruntime" | "tensorrt"

    @property
    def matches(self) -> bool:
        """True when :meth:`match` works: the file holds the one graph (``smatch export --with-matching``)."""
        ...

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 in [0, 1] -> (B, C, S/stride, S/stride) float32."""
        ...

    def match(self, src: np.ndarray, tgt: np.ndarray, kps: np.ndarray, valid: np.ndarray) -> GraphMatches:
        """One-graph model only: (B, 3, S, S) source and target images, (B, N, 2) source keypoints in the
        model frame, (B, N) validity -> :class:`GraphMatches`. Raises when :attr:`matches` is False."""
        ...


def _no_match_graph(path: Path) -> SimpleMatchError:
    return SimpleMatchError(
        f"{path} holds the features model only, not the matching graph",
        "export it with `smatch export --with-matching`, or match with Matcher.match on encoded features",
    )


def _check_device(device: str) -> str:
    device = str(device).lower()
    if device.startswith("cuda:"):
        raise SimpleMatchError(
            f"device {device!r} is not supported by the runtime",
            "pass --device cuda (use CUDA_VISIBLE_DEVICES)",
        )
    if device not in DEVICES:
        raise SimpleMatchError(f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    return device


def _check_images(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, size, size):
        raise SimpleMatchError(
            f"model input must be (B, 3, {size}, {size}), got {tuple(images.shape)}",
            "preprocess with simplematch.image.resize_square(img, meta.img_size)",
        )
    # The contract is float32 I/O even for fp16 models (the cast lives inside the graph).
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_features(feats: np.ndarray, meta: ModelMeta, batch: int, source: str) -> np.ndarray:
    side = round(meta.img_size / meta.stride)
    if feats.ndim != 4 or feats.shape[0] != batch or feats.shape[2:] != (side, side):
        raise SimpleMatchError(
            f"{source} output has shape {tuple(feats.shape)}, its metadata promises (B, C, {side}, {side})",
            "re-export the model with `smatch export`",
        )
    return np.ascontiguousarray(feats, dtype=np.float32)


def _describe(err: Exception) -> str:
    """First line of an onnxruntime error (they can span pages), with its type."""
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:200]}"


def _static_dim(dim: Any) -> int | None:
    """onnxruntime/TensorRT report dynamic dims as strings, None or -1; static ones as positive ints."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxBackend:
    """An exported ``.onnx`` model in an onnxruntime ``InferenceSession``.

    ``device="cuda"`` asks for the CUDA execution provider (plus TensorRT's, if ``trt_ep``) and then checks
    ``session.get_providers()`` -- what the session really uses. ``get_available_providers()`` only lists
    what the installed wheel was built with, not whether CUDA can be loaded on this machine. If CUDA was
    asked for and the session ended up on CPU, that is an error unless ``allow_fallback``.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        allow_fallback: bool = False,
        *,
        trt_ep: bool = False,
        threads: int | None = None,
    ) -> None:
        from simplematch.extras import check_onnxruntime_install

        check_onnxruntime_install()  # both wheels at once would make the provider check below meaningless
        import onnxruntime as ort

        self.path = Path(path)
        self.device = _check_device(device)
        if self.device != "cpu" and hasattr(ort, "preload_dlls"):
            # `[gpu]` brings CUDA / cuDNN as NVIDIA wheels; onnxruntime finds them only once preloaded. A
            # machine without them keeps going: the provider check below then says what is missing.
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        if not self.path.is_file():
            raise SimpleMatchError(
                f"model not found: {self.path}", "pass --model PATH/model.onnx (written by `smatch export`)"
            )
        requested: list[Any] = ["CPUExecutionProvider"]
        if self.device == "cuda":
            requested = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if trt_ep:
                requested.insert(0, "TensorrtExecutionProvider")
        if self.device in TRT_DEVICES:
            requested = [
                trt_ep_provider(self.path, fp16=self.device == "tensorrt-fp16"),
                "CUDAExecutionProvider",
            ]
            requested.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the provider check below explains a fallback in one line
        if threads:
            opts.intra_op_num_threads = threads
        try:
            with warnings.catch_warnings():
                # onnxruntime warns when a requested provider is not built in; get_providers() decides below.
                warnings.simplefilter("ignore")
                self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=requested)
        except Exception as err:
            raise SimpleMatchError(
                f"cannot load ONNX model {self.path} ({_describe(err)})",
                "pass a model written by `smatch export` (the file may be truncated or not ONNX)",
            ) from err
        used = self.session.get_providers()
        self.provider = used[0]
        if self.device in TRT_DEVICES and self.provider != "TensorrtExecutionProvider":
            with contextlib.suppress(OSError):  # leave nothing behind: drop the cache folder if still empty
                trt_cache_dir(self.path).rmdir()
            raise SimpleMatchError(
                f"TensorRT requested but onnxruntime runs {self.path.name} on {self.provider}",
                "install onnxruntime-gpu and TensorRT on a machine with an NVIDIA GPU, or pass --device cuda",
            )
        if self.device in TRT_DEVICES:
            write_engine_env(trt_cache_dir(self.path))
        if self.device == "cuda" and self.provider == "CPUExecutionProvider":
            if not allow_fallback:
                raise SimpleMatchError(
                    "CUDA requested but onnxruntime runs on CPU (onnxruntime-gpu missing or CUDA unusable)",
                    GPU_INSTALL_FIX,
                )
            # One line on stderr (a Python warning would also print this source line).
            print(
                "warning: CUDA unavailable to onnxruntime; running on CPU (--allow-fallback)", file=sys.stderr
            )
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.meta = ModelMeta.from_props(props, source=str(self.path))
        self._validate_io()

    @property
    def matches(self) -> bool:
        """True for a one-graph model (``smatch export --with-matching``): :meth:`match` works."""
        return self.meta.graph == "matching"

    def _validate_io(self) -> None:
        meta, src = self.meta, str(self.path)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.matches and not (set(MATCH_INPUTS) <= set(inputs) and set(MATCH_OUTPUTS) <= set(outputs)):
            raise SimpleMatchError(
                f"{src} says it holds the one-graph model but has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}",
                "re-export it with `smatch export --with-matching`",
            )
        if meta.input_name not in inputs or meta.output_name not in outputs:
            raise SimpleMatchError(
                f"{src} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; its metadata names "
                f"'{meta.input_name}' -> '{meta.output_name}'",
                "re-export the model with `smatch export`",
            )
        inp = inputs[meta.input_name]
        if inp.type != "tensor(float)":
            raise SimpleMatchError(
                f"{src} input '{inp.name}' is {inp.type}, not float32", "re-export the model"
            )
        shape = list(inp.shape)
        if len(shape) != 4 or _static_dim(shape[1]) not in (None, 3):
            raise SimpleMatchError(f"{src} input shape {shape} is not (B, 3, S, S)", "re-export the model")
        sides = [_static_dim(d) for d in shape[2:]]
        if any(s is not None and s != meta.img_size for s in sides):
            raise SimpleMatchError(
                f"{src} takes {shape[2]}x{shape[3]} images but its metadata says img_size={meta.img_size}",
                "re-export the model so graph and metadata agree",
            )
        if abs(meta.img_size / meta.stride - round(meta.img_size / meta.stride)) > 1e-6:
            raise SimpleMatchError(
                f"{src} metadata stride {meta.stride} does not divide img_size {meta.img_size}",
                "re-export the model",
            )
        # A graph exported with a fixed batch B serves any number of images: encode() runs chunks of B and
        # pads the last one (repeating its last image), so `--batch 8` models work in infer / eval too.
        self.max_batch = _static_dim(shape[0])

    def match(self, src: np.ndarray, tgt: np.ndarray, kps: np.ndarray, valid: np.ndarray) -> GraphMatches:
        """The one graph over pairs in chunks; a static batch gets its exact size (last chunk padded)."""
        if not self.matches:
            raise _no_match_graph(self.path)
        src = _check_images(src, self.meta.img_size)
        tgt = _check_images(tgt, self.meta.img_size)
        kps = np.ascontiguousarray(kps, dtype=np.float32)
        valid = np.ascontiguousarray(valid, dtype=bool)
        step = self.max_batch or max(len(src), 1)
        parts: list[list[np.ndarray]] = [[], [], [], [], []]
        for start in range(0, len(src), step):
            feed = [a[start : start + step] for a in (src, tgt, kps, valid)]
            n = len(feed[0])
            if self.max_batch and n < self.max_batch:
                feed = [np.concatenate([a, np.repeat(a[-1:], self.max_batch - n, axis=0)]) for a in feed]
            try:
                outs = self.session.run(list(MATCH_OUTPUTS), dict(zip(MATCH_INPUTS, feed, strict=True)))
            except Exception as err:
                raise SimpleMatchError(
                    f"onnxruntime failed on {self.path} ({_describe(err)})", "re-export the model"
                ) from err
            pred, peak, mass, feats = outs
            b = len(feed[0])  # features are the b source maps, then the b target maps
            for store, value in zip(parts, (pred, peak, mass, feats[:b], feats[b:]), strict=True):
                store.append(np.asarray(value)[:n])
        return GraphMatches(*(np.concatenate(p) for p in parts))

    def _encode_with_match_graph(self, images: np.ndarray) -> np.ndarray:
        """Features from a one-graph file: the images go in as sources and targets of half as many pairs
        (one dummy keypoint each, marked invalid), so each is encoded once and no twin file is needed."""
        half = (len(images) + 1) // 2
        src, tgt = images[:half], images[half:]
        if len(tgt) < half:  # odd count: the last image doubles as the missing target, dropped below
            tgt = np.concatenate([tgt, images[-1:]])
        kps = np.zeros((half, 1, 2), np.float32)
        *_, fsrc, ftgt = self.match(src, tgt, kps, np.zeros((half, 1), bool))
        out = np.concatenate([fsrc, ftgt])[: len(images)]
        return _check_features(out, self.meta, len(images), str(self.path))

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images, self.meta.img_size)
        if self.matches and len(images):
            return self._encode_with_match_graph(images)
        step = self.max_batch or max(len(images), 1)
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            if self.max_batch and len(chunk) < self.max_batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.max_batch - len(chunk), axis=0)])
            n = min(step, len(images) - start)
            try:
                (out,) = self.session.run([self.meta.output_name], {self.meta.input_name: chunk})
                out = np.asarray(out)[:n]
            except Exception as err:
                raise SimpleMatchError(
                    f"onnxruntime failed on {self.path} ({_describe(err)})",
                    "check that the model was written by `smatch export` for this input size",
                ) from err
            parts.append(_check_features(out, self.meta, n, str(self.path)))
        if not parts:
            side = round(self.meta.img_size / self.meta.stride)
            return np.zeros((0, 0, side, side), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def trt_cache_dir(model: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.trt-cache/``: onnxruntime's TensorRT engine + timing cache folder."""
    return model.with_name(model.name + ".trt-cache")


ENGINE_ENV_FILE = "simplematch-engine.json"
ENGINE_ENV_KEY = "simplematch.engine_env"


def current_engine_env() -> dict[str, str]:
    """TensorRT version, GPU name and compute capability of this machine ("unknown" where not found).

    nvidia-smi is asked instead of a CUDA library so this stays import-free; an engine only runs on the
    TensorRT version and GPU architecture that built it.
    """
    import importlib.metadata
    import subprocess

    version = "unknown"
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu13-libs"):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    gpu, cc = "unknown", "unknown"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()  # fmt: skip
        gpu, cc = (v.strip() for v in out.split(",", 1))
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return {"tensorrt": version, "gpu": gpu, "compute_capability": cc}


def engine_env_mismatch(recorded: dict[str, Any], current: dict[str, str]) -> str | None:
    """Why an engine built under ``recorded`` cannot run under ``current`` (None if it can).

    Unknown values on either side are not a mismatch (no evidence); the GPU *name* is reported but only the
    compute capability and TensorRT version decide, as those are what engines are tied to.
    """
    for key, what in (("tensorrt", "TensorRT"), ("compute_capability", "compute capability")):
        a, b = str(recorded.get(key, "unknown")), str(current.get(key, "unknown"))
        if "unknown" not in (a, b) and a != b:
            return (
                f"built with {what} {a} on {recorded.get('gpu', '?')}, this machine has {what} {b} on "
                f"{current.get('gpu', '?')}"
            )
    return None


def check_engine_env(recorded: dict[str, Any] | None, where: str, fix: str) -> None:
    """Refuse an engine whose recorded TensorRT version / compute capability differ from this machine's."""
    if not recorded:
        return
    why = engine_env_mismatch(recorded, current_engine_env())
    if why:
        raise SimpleMatchError(f"TensorRT engine {where} does not fit this machine: {why}", fix)


def write_engine_env(cache: Path) -> None:
    """Record what built the engines in ``cache`` (once; an existing record was checked before)."""
    side = cache / ENGINE_ENV_FILE
    if cache.is_dir() and not side.exists():
        from simplematch.files import atomic_write_text

        atomic_write_text(side, json.dumps(current_engine_env(), indent=2) + "\n")


def trt_ep_provider(model: Path, *, fp16: bool) -> tuple[str, dict[str, Any]]:
    """onnxruntime's TensorRT EP with an engine cache next to the model, checked against this machine first.

    Not exercised by CI (no GPU, no TensorRT there).
    """
    cache = trt_cache_dir(model)
    side = cache / ENGINE_ENV_FILE
    if side.is_file():
        try:
            recorded = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            recorded = {"tensorrt": "unreadable record"}
        check_engine_env(recorded, str(cache), f"delete {cache} to let onnxruntime rebuild the engine here")
    cache.mkdir(exist_ok=True)
    options = {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    return "TensorrtExecutionProvider", options


def engine_sidecar(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (the :meth:`ModelMeta.to_json` props dict)."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def _import_cudart() -> Any:
    """cuda-python's runtime bindings (new ``cuda.bindings`` layout first, then the pre-12.6 ``cuda`` one).

    One device-memory library is supported on purpose: a second (pycuda) would be a second untested path.
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError as err:
            raise SimpleMatchError(
                "the TensorRT backend needs cuda-python for GPU buffers and it is not installed",
                "pip install cuda-python (matching your CUDA major version)",
            ) from err
    return cudart


class TensorRTBackend:
    """A native TensorRT engine (``model.engine``) plus its ``model.engine.json`` metadata sidecar.

    Written against the TensorRT 10.x / 11.x Python API (named I/O tensors, ``set_input_shape``,
    ``set_tensor_address``, ``execute_async_v3``) with device buffers from cuda-python. An engine is tied to
    the GPU model and TensorRT version that built it. Not exercised by this repository's CI (no TensorRT and
    no GPU there): its tests are marked ``gpu`` and skip without ``tensorrt``.
    """

    runtime = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str = "cuda") -> None:
        self.path = Path(engine_path)
        if _check_device(device) not in ("cuda", *TRT_DEVICES):
            raise SimpleMatchError(
                f"{self.path} is a TensorRT engine, which runs on an NVIDIA GPU only",
                "pass --device cuda, or use the .onnx model for CPU",
            )
        if not self.path.is_file():
            raise SimpleMatchError(
                f"engine not found: {self.path}", "build it with `smatch export CKPT --format trt`"
            )
        self.meta = self._read_sidecar()
        try:
            import tensorrt as trt
        except ImportError as err:
            raise SimpleMatchError("the TensorRT Python package is not installed", TRT_INSTALL_FIX) from err
        self._trt = trt
        self._cudart = _import_cudart()
        self.provider = f"TensorRT {getattr(trt, '__version__', '?')}"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise SimpleMatchError(
                f"TensorRT {self.provider} cannot deserialize {self.path}",
                "engines only run on the TensorRT version and GPU model that built them: rebuild it here",
            )
        self.context = self.engine.create_execution_context()
        self._validate_io()
        self._stream = self._cuda(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _read_sidecar(self) -> ModelMeta:
        side = engine_sidecar(self.path)
        if not side.is_file():
            raise SimpleMatchError(
                f"{self.path} has no metadata sidecar {side.name}", "re-export with `smatch export`"
            )
        try:
            props = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SimpleMatchError(f"{side} is not valid JSON", "re-export with `smatch export`") from err
        if not isinstance(props, dict):
            raise SimpleMatchError(f"{side} must hold a JSON object", "re-export with `smatch export`")
        env = props.pop(ENGINE_ENV_KEY, None)
        check_engine_env(
            json.loads(env) if isinstance(env, str) else env,
            str(self.path),
            "rebuild it with `smatch export`",
        )
        return ModelMeta.from_props({str(k): str(v) for k, v in props.items()}, source=str(side))

    def _cuda(self, result: Any) -> Any:
        """cuda-python returns ``(err, *values)``; turn a failure into a one-line error."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise SimpleMatchError(
                f"CUDA call failed: {err}", "check the NVIDIA driver and CUDA installation"
            )
        return values[0] if len(values) == 1 else (values or None)

    def _validate_io(self) -> None:
        trt, eng, meta, src = self._trt, self.engine, self.meta, str(self.path)
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        modes = {n: eng.get_tensor_mode(n) for n in names}
        if (
            modes.get(meta.input_name) != trt.TensorIOMode.INPUT
            or modes.get(meta.output_name) != trt.TensorIOMode.OUTPUT
        ):
            raise SimpleMatchError(
                f"{src} has I/O tensors {names}; sidecar says '{meta.input_name}' -> '{meta.output_name}'",
                "rebuild the engine from the exported ONNX",
            )
        shape = list(eng.get_tensor_shape(meta.input_name))
        if len(shape) != 4 or any(s not in (-1, meta.img_size) for s in shape[2:]):
            raise SimpleMatchError(
                f"{src} input shape {shape} does not match the sidecar's img_size={meta.img_size}",
                "rebuild the engine from the exported ONNX",
            )
        self._in_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(meta.input_name)))
        self._out_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(meta.output_name)))
        if shape[0] == -1:
            # Dynamic batch: the largest batch of optimisation profile 0 (min, opt, max shapes).
            self.max_batch = int(eng.get_tensor_profile_shape(meta.input_name, 0)[2][0])
        else:
            self.max_batch = int(shape[0])
        self._static_batch = shape[0] != -1

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda(self._cudart.cudaFree(ptr))
            ptr = int(self._cuda(self._cudart.cudaMalloc(nbytes)))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _pad(self, chunk: np.ndarray) -> np.ndarray:
        """A static-batch engine takes exactly its batch: pad the last chunk with its last image."""
        if not self._static_batch or len(chunk) == self.max_batch:
            return chunk
        return np.concatenate([chunk, np.repeat(chunk[-1:], self.max_batch - len(chunk), axis=0)])

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        cudart, meta, ctx = self._cudart, self.meta, self.context
        host_in = np.ascontiguousarray(chunk, dtype=self._in_dtype)
        if not ctx.set_input_shape(meta.input_name, host_in.shape):
            raise SimpleMatchError(
                f"{self.path} rejects input shape {host_in.shape}",
                "rebuild the engine with a larger batch profile",
            )
        out_shape = tuple(ctx.get_tensor_shape(meta.output_name))
        host_out = np.empty(out_shape, dtype=self._out_dtype)
        d_in = self._device_buffer(meta.input_name, host_in.nbytes)
        d_out = self._device_buffer(meta.output_name, host_out.nbytes)
        ctx.set_tensor_address(meta.input_name, d_in)
        ctx.set_tensor_address(meta.output_name, d_out)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._cuda(cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, host_in.nbytes, h2d, self._stream))
        if not ctx.execute_async_v3(int(self._stream)):
            raise SimpleMatchError(f"TensorRT failed to run {self.path}", "see the TensorRT log above")
        self._cuda(cudart.cudaMemcpyAsync(host_out.ctypes.data, d_out, host_out.nbytes, d2h, self._stream))
        self._cuda(cudart.cudaStreamSynchronize(self._stream))
        return host_out

    @property
    def matches(self) -> bool:
        return False  # engines are built from the features graph only

    def match(self, src: np.ndarray, tgt: np.ndarray, kps: np.ndarray, valid: np.ndarray) -> GraphMatches:
        raise _no_match_graph(self.path)

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images, self.meta.img_size)
        chunks = [images[i : i + self.max_batch] for i in range(0, len(images), self.max_batch)]
        parts = [
            _check_features(self._run(self._pad(c))[: len(c)], self.meta, len(c), str(self.path))
            for c in chunks
        ]
        if not parts:
            side = round(self.meta.img_size / self.meta.stride)
            return np.zeros((0, 0, side, side), np.float32)
        return np.concatenate(parts)

    def close(self) -> None:
        """Free the device buffers and the stream (also done at garbage collection)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def load_backend(path: str | Path, device: str = "cpu", allow_fallback: bool = False) -> Backend:
    """Pick the backend by suffix: ``.onnx`` -> onnxruntime, ``.engine`` / ``.plan`` -> TensorRT."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxBackend(path, device=device, allow_fallback=allow_fallback)
    if suffix in ENGINE_SUFFIXES:
        # No CPU fallback for an engine, whatever allow_fallback says: the .onnx model is the CPU path.
        return TensorRTBackend(path, device=device)
    raise SimpleMatchError(
        f"unknown model format '{suffix or path.name}'",
        "pass a .onnx model or a TensorRT .engine from `smatch export`",
    )
