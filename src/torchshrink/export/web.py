"""`ts.export(model, "DIR", example=x, format="web")`: a folder a browser runs offline.

DIR holds the ONNX file (the same file `format="onnx"` writes, checked in ONNX Runtime),
`model.json` (its inputs and outputs), `inputs.json` (the rows the page runs), `index.html`
and `app.js` (a static page, no build step), and `ort/`: the three files of ONNX Runtime
Web's WebAssembly build, copied from a local `onnxruntime-web` npm package. Nothing is
fetched from a CDN when the page runs, so a served copy of DIR works without a network.

    python -m http.server --directory DIR 8000     # then open http://localhost:8000/

The page publishes its result (outputs, latency per inference, versions) as the promise
`window.torchshrinkWeb`, as JSON in `<pre id="results">`, and in the title
("torchshrink web: done" / "torchshrink web: error"), so scripts and tests can read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.export.paths import output_path

if TYPE_CHECKING:
    from torchshrink.export.api import ExportResult

__all__ = ["OrtWeb", "find_ort_web", "npm_install_ort_web", "write_inputs", "read_inputs", "export_web",
           "MODEL_FILE", "ORT_WEB_FILES", "DEFAULT_NPM_CACHE"]

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
INPUTS_FILE = "inputs.json"
PAGE_FILES = ("index.html", "app.js")
# The WebAssembly-only ES module build and the runtime it loads: enough for the "wasm" backend.
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
NPM_PACKAGE = "onnxruntime-web"
DEFAULT_NPM_CACHE = Path.home() / ".cache" / "torchshrink" / "npm"
MANIFEST_FORMAT = "torchshrink-web/1"
# ONNX element types the page can feed (onnx.TensorProto numbers -> ONNX Runtime Web dtype names).
_WEB_DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 3: "int8", 2: "uint8", 9: "bool"}
_NUMPY = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
          "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
_INSTALL_HINT = (f"install it with `npm install {NPM_PACKAGE}` (in the current directory, or pass its "
                 "folder as ort_web= / --ort-web), or let torchshrink run npm: npm_install=True / --npm-install")


@dataclasses.dataclass(frozen=True)
class OrtWeb:
    """A local onnxruntime-web package: its dist folder and version."""

    dist: Path
    version: str


def _package_of(path: Path) -> Path | None:
    """The onnxruntime-web package folder that `path` names: the package, its dist/, or a
    node_modules/ (or a project folder with one) that holds it."""
    for cand in (path, path.parent, path / NPM_PACKAGE, path / "node_modules" / NPM_PACKAGE):
        pj = cand / "package.json"
        if pj.is_file():
            try:
                if json.loads(pj.read_text()).get("name") == NPM_PACKAGE:
                    return cand
            except (OSError, ValueError):
                continue
    return None


def find_ort_web(ort_web: str | os.PathLike[str] | None = None, *, npm_cache: str | os.PathLike[str] | None = None
                 ) -> OrtWeb:
    """The onnxruntime-web package at `ort_web`, or else in ./node_modules or the npm cache
    folder torchshrink installs into. Raises ConfigError saying how to install it."""
    if ort_web is not None:
        places = [Path(ort_web)]
    else:
        places = [Path.cwd() / "node_modules", Path(npm_cache or DEFAULT_NPM_CACHE) / "node_modules"]
    for place in places:
        pkg = _package_of(place)
        if pkg is None:
            continue
        dist = pkg / "dist"
        missing = [f for f in ORT_WEB_FILES if not (dist / f).is_file()]
        if missing:
            raise ConfigError(f"the {NPM_PACKAGE} package at {str(pkg)!r} lacks {', '.join(missing)} in dist/; "
                              f"reinstall it (npm install {NPM_PACKAGE}) or pass another folder")
        return OrtWeb(dist, str(json.loads((pkg / "package.json").read_text()).get("version", "unknown")))
    looked = ", ".join(repr(str(p)) for p in places)
    raise ConfigError(f"{NPM_PACKAGE} (ONNX Runtime Web) not found in {looked}; {_INSTALL_HINT}")


def npm_install_ort_web(prefix: str | os.PathLike[str] | None = None, *, version: str | None = None) -> OrtWeb:
    """`npm install onnxruntime-web` into `prefix` (default the torchshrink npm cache folder);
    a package already there is reused. Needs npm and, the first time, the npm registry."""
    where = Path(prefix or DEFAULT_NPM_CACHE)
    try:
        found = find_ort_web(where)
        if version is None or found.version == version:
            return found
    except ConfigError:
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(f"npm not found, so {NPM_PACKAGE} cannot be installed; install Node.js and npm "
                          "(Debian: apt-get install nodejs npm) or install the package yourself and pass "
                          "its folder as ort_web= / --ort-web")
    where.mkdir(parents=True, exist_ok=True)
    spec = NPM_PACKAGE + (f"@{version}" if version else "")
    cmd = [npm, "install", "--prefix", str(where), "--no-audit", "--no-fund", "--ignore-scripts", "--no-save", spec]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise ConfigError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-600:]}; check the network and npm's registry "
                          "setting, or install the package yourself and pass ort_web=")
    return find_ort_web(where)


# ---------------------------------------------------------------------------------------------
# inputs.json: {"inputs": {name: {"dims": [...], "data": [flat values]} | nested list}, "batch": 1, ...}

def write_inputs(path: str | os.PathLike[str], inputs: Mapping[str, torch.Tensor | np.ndarray], *,
                 batch: int = 1, warmup: int = 3, warmup_ms: float = 0.0, rounds: int = 20,
                 per_round: int = 10) -> None:
    """Write the rows the page runs: `inputs` maps each model input name to an array whose
    first dimension is the row. The page warms up for `warmup` inferences and at least
    `warmup_ms`, runs the rows `batch` per inference, then times `rounds` x `per_round`
    inferences on the first batch."""
    doc: dict[str, Any] = {"inputs": {}, "batch": batch, "warmup": warmup, "warmup_ms": warmup_ms,
                           "rounds": rounds, "per_round": per_round}
    for name, value in inputs.items():
        a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if a.dtype == np.bool_:
            data: list[Any] = a.reshape(-1).tolist()
        elif np.issubdtype(a.dtype, np.integer):
            data = [int(v) for v in a.reshape(-1)]
        else:  # float32 values print exactly as the page's Float32Array will hold them
            data = [float(v) for v in a.astype(np.float32).reshape(-1)]
        doc["inputs"][name] = {"dims": list(a.shape), "data": data}
    Path(path).write_text(json.dumps(doc, separators=(",", ":")))


def _nested(name: str, value: Any, where: str) -> np.ndarray:
    try:
        if isinstance(value, Mapping):
            if set(value) != {"dims", "data"}:
                raise ConfigError(f"{where}: input {name!r} must be a nested list or "
                                  f'{{"dims": [...], "data": [...]}}, got keys {sorted(value)}')
            dims = value["dims"]
            if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
                raise ConfigError(f"{where}: input {name!r} has dims {dims!r}; dims are non-negative integers")
            data = np.asarray(value["data"])
            if data.size != math.prod(dims):
                raise ConfigError(f"{where}: input {name!r} has {data.size} values but dims {dims} hold "
                                  f"{math.prod(dims)}")
            return data.reshape(dims)
        return np.asarray(value)
    except ValueError as e:  # ragged nested lists
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: input {name!r} is a ragged nested list ({e}); give equal-length rows") from e


def _load_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read inputs file {str(path)!r} ({e.strerror or e})") from e
    except ValueError as e:
        raise ConfigError(f"{str(path)} is not valid JSON ({e}); fix the file or write it with "
                          "torchshrink.export.web.write_inputs()") from e


def read_inputs(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Read and check an inputs.json against a model.json manifest: the same rules the page
    applies, so a bad file fails here, with its name and the fix, before any browser runs."""
    where = str(path)
    doc = _load_json(path)
    names = [i["name"] for i in manifest["inputs"]]
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise ConfigError(f'{where} must be an object with "inputs": {{"<input name>": values, ...}}; '
                          f"the model's inputs are {', '.join(names)}")
    missing = [n for n in names if n not in doc["inputs"]]
    unknown = [n for n in doc["inputs"] if n not in names]
    if missing or unknown:
        raise ConfigError(f"{where}: the model's inputs are {', '.join(names)}; "
                          + "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                                  f"unknown {', '.join(unknown)}" if unknown else "") if p))
    out: dict[str, np.ndarray] = {}
    for spec in manifest["inputs"]:
        name, shape = spec["name"], spec["shape"]
        a = _nested(name, doc["inputs"][name], where)
        if a.ndim != len(shape) or any(w is not None and i > 0 and a.shape[i] != w for i, w in enumerate(shape)):
            raise ConfigError(f"{where}: input {name!r} has shape {list(a.shape)}; the model takes {shape} "
                              "(null = any size; the first dimension is the row)")
        kind = spec["dtype"]
        if a.size and a.dtype.kind not in ("b", "i", "u", "f"):
            raise ConfigError(f"{where}: input {name!r} holds non-numeric values ({a.dtype}); expected {kind}")
        if a.size and kind not in ("float32", "float64", "bool") and not np.all(np.mod(a, 1) == 0):
            raise ConfigError(f"{where}: input {name!r} must hold integers ({kind})")
        out[name] = a.astype(_NUMPY[kind])
    rows = {a.shape[0] for a in out.values()}
    if len(rows) != 1 or 0 in rows:
        raise ConfigError(f"{where}: every input needs the same number of rows (dimension 0), at least one; got "
                          + ", ".join(f"{n}: {a.shape[0]}" for n, a in out.items()))
    for key, low in (("batch", 1), ("warmup", 0), ("rounds", 1), ("per_round", 1)):
        v = doc.get(key, low)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f'{where}: "{key}" must be an integer >= {low}, got {v!r}')
    warm = doc.get("warmup_ms", 0)
    if not isinstance(warm, (int, float)) or isinstance(warm, bool) or not warm >= 0:
        raise ConfigError(f'{where}: "warmup_ms" must be a number >= 0, got {warm!r}')
    return out


# ---------------------------------------------------------------------------------------------

def _manifest(onnx_path: Path, form: str, ort: OrtWeb) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return {"name": v.name, "dtype": _WEB_DTYPES.get(t.elem_type, f"onnx type {t.elem_type}"), "shape": dims}

    inputs = [spec(v) for v in graph.input if v.name not in inits]
    bad = [i for i in inputs if i["dtype"] not in _NUMPY]
    if bad:
        raise ConfigError(f"the web page feeds {', '.join(_NUMPY)} inputs; the model's input {bad[0]['name']!r} is "
                          f"{bad[0]['dtype']}: export with float32 example inputs (half-precision layers inside "
                          "the model are fine)")
    return {"format": MANIFEST_FORMAT, "model": MODEL_FILE, "bytes": onnx_path.stat().st_size, "form": form,
            "inputs": inputs, "outputs": [spec(v) for v in graph.output],
            "onnxruntime_web": {"version": ort.version, "files": [f"ort/{f}" for f in ORT_WEB_FILES]}}


def _check_dir(out: Path) -> None:
    output_path(out, folder="web")
    if out.is_dir() and any(out.iterdir()) and not _is_web_export(out):
        raise ConfigError(f"{str(out)!r} is not empty and holds no torchshrink web export (no {MANIFEST_FILE}); "
                          "choose a new or empty directory, so no file of yours is replaced")


def _is_web_export(d: Path) -> bool:
    try:
        return json.loads((d / MANIFEST_FILE).read_text()).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old export is kept until the new one is there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _rows_by_name(value: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of an example (a tensor, a tuple in argument order, or a dict by input
    name) keyed by the ONNX input names."""
    if isinstance(value, Mapping):
        given = {k: v for k, v in value.items() if isinstance(v, torch.Tensor)}
        if set(given) >= set(names):
            return {n: given[n] for n in names}
        tensors = list(given.values())
    else:
        tensors = [value] if isinstance(value, torch.Tensor) else [
            t for t in (value if isinstance(value, (tuple, list)) else ()) if isinstance(t, torch.Tensor)]
    if len(tensors) != len(names):
        raise ConfigError(f"inputs must give one tensor per model input ({', '.join(names)}), got {len(tensors)}")
    return dict(zip(names, tensors))


def export_web(model: nn.Module, out: str | os.PathLike[str], *, example: Any,
               inputs: str | os.PathLike[str] | torch.Tensor | Sequence[torch.Tensor] | None = None,
               ort_web: str | os.PathLike[str] | None = None, npm_install: bool = False,
               npm_cache: str | os.PathLike[str] | None = None, batch: int = 1,
               **onnx_options: Any) -> ExportResult:
    """Write the web folder `out` (see the module docstring) and return the ONNX export's
    ExportResult with path=out, format="web" and bytes = the ONNX file's size (what a page
    downloads for the model). `inputs`: the rows inputs.json holds (tensors in the model's
    argument order, or an inputs.json file to copy after checking it); default `example`.
    `ort_web`: a local onnxruntime-web package (or its node_modules); `npm_install=True`
    installs it into `npm_cache` with npm when it is not found."""
    from torchshrink.export.api import export

    out = Path(out)
    _check_dir(out)
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be an integer >= 1 (rows per inference in the page), got {batch!r}")
    if isinstance(inputs, (str, os.PathLike)):
        _load_json(inputs)  # a typo in the file fails now; its shapes are checked once the graph is known
    try:
        ort = find_ort_web(ort_web, npm_cache=npm_cache)
    except ConfigError:
        if not npm_install:
            raise
        ort = npm_install_ort_web(ort_web or npm_cache)
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        result = export(model, tmp / MODEL_FILE, example=example, format="onnx", **onnx_options)
        manifest = _manifest(tmp / MODEL_FILE, result.form, ort)
        names = [i["name"] for i in manifest["inputs"]]
        if isinstance(inputs, (str, os.PathLike)):
            read_inputs(inputs, manifest)
            shutil.copyfile(inputs, tmp / INPUTS_FILE)
        else:
            rows = _rows_by_name(example if inputs is None else inputs, names)
            write_inputs(tmp / INPUTS_FILE, rows, batch=batch)
            read_inputs(tmp / INPUTS_FILE, manifest)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        assets = resources.files("torchshrink.export") / "web_assets"
        for name in PAGE_FILES:
            (tmp / name).write_bytes((assets / name).read_bytes())
        (tmp / "ort").mkdir()
        for name in ORT_WEB_FILES:
            shutil.copyfile(ort.dist / name, tmp / "ort" / name)
        tmp.chmod(0o755)  # mkdtemp makes it private; a served folder is read by others
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dataclasses.replace(result, path=str(out), format="web", bytes=manifest["bytes"])
