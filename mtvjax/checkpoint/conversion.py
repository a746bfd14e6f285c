"""Generic pieces of checkpoint conversion: lazily read source tensors, a name table of
(source key → target path [, layer slot]) entries with shape rules, a layout check that every
source key and every target (slot) is used exactly once, and filling the target arrays.

A converter supplies its own table and rules; this module knows nothing about any model.
Targets are paths (tuples of names) in a parameter tree. A *stacked* target (an `nn.scan` layer
stack) has one or more leading layer axes (nested scans: groups × blocks); its entries carry the
slot `index` they fill (an int, or a tuple with one int per stacked axis), and the rule maps a
source tensor to one slot (the target shape without the stacked axes).

Sources (`TensorSource.open`):
  * a `.safetensors` file, read through `safe_open` one tensor at a time (memory-mapped);
  * a folder with a `*.safetensors.index.json` (diffusers / HF sharded layout), or with a single
    `*.safetensors` / `*.bin` / `*.pt` file; a diffusers pipeline folder's `transformer/` too;
  * a torch file (`.pt`, `.bin`, `.pth`), read with `torch.load(weights_only=True, mmap=True)`
    (state dict, or a dict holding one under `module` / `state_dict`).
`TensorSource.merged_safetensors` / `open_torch` open those explicitly (for converters whose
folder rules differ); `view`, `renamed` and `strip_prefix` give the same tensors under other names
(`describe` still quotes the file's key). Writing and reading the converted checkpoints:
`mtvjax.checkpoint.converted`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
WRAPPER_KEYS = ("module", "state_dict")


class ConversionError(ValueError):
    """The source cannot be converted; the message starts with the source's path."""

    def __init__(self, source, problem: str):
        super().__init__(f"{source}: {problem}")


class Rule(NamedTuple):
    """How one source tensor becomes one target (slot).

    `apply(array, target_shape) -> array of target_shape`; `source_shapes(target_shape)` lists the
    source shapes the rule accepts (the first is quoted in errors).
    """

    apply: Callable[[np.ndarray, tuple], np.ndarray]
    source_shapes: Callable[[tuple], Sequence[tuple]]


class Entry(NamedTuple):
    source: str               # source state-dict key
    target: tuple             # path in the target tree
    rule: str                 # name in the converter's rules
    index: int | tuple | None = None  # slot along the leading (layer) axes of a stacked target


AS_IS = Rule(lambda a, t: a, lambda t: [tuple(t)])
LINEAR = Rule(lambda a, t: a.T, lambda t: [(t[1], t[0])])   # torch [out, in] -> [in, out]


def format_keys(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def folder_config(path) -> dict | None:
    """The `config.json` in folder `path` (or next to file `path`), if any."""
    path = Path(path)
    file = (path if path.is_dir() else path.parent) / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise ConversionError(file, f"invalid JSON ({e})") from e


def slot_of(index: int | tuple | None) -> tuple:
    """An entry's `index` as a tuple over the stacked axes (`()`: the whole target)."""
    if index is None:
        return ()
    return tuple(int(i) for i in index) if isinstance(index, tuple) else (int(index),)


def _slot_name(path: tuple, slot: tuple) -> str:
    return "/".join(path) + (f"[{', '.join(map(str, slot))}]" if slot else "")


def check_table(table: Sequence[Entry]) -> None:
    """Each source key and each target slot appears once in the table (a bug otherwise)."""
    sources = [e.source for e in table]
    slots = [(e.target, slot_of(e.index)) for e in table]
    if len(set(sources)) != len(sources) or len(set(slots)) != len(slots):
        raise AssertionError("name table maps a source key or a target slot twice")


def check_layout(shapes: dict, targets: dict, table: Sequence[Entry], rules: dict, source,
                 what: str = "the model", stacked: Callable[[tuple], int] = lambda p: 0,
                 describe: Callable[[str], str] = str, hint: str = "") -> None:
    """Every source key used, every target slot produced, shapes agreeing; otherwise one
    `ConversionError` listing unused source keys, missing keys, target slots without a source
    and shape mismatches (source shapes in the file's layout), then `hint` when given.

    `shapes`: {source key: shape}; `targets`: {path: shape} (stacked: with the layer axes);
    `stacked(path)`: how many leading layer axes the target has (True counts as one);
    `describe(key)`: a source key as errors quote it (e.g. `TensorSource.describe`).
    """
    check_table(table)
    problems = []
    used = {e.source for e in table}
    produced = {(e.target, slot_of(e.index)) for e in table}
    wanted = set()
    for path, shape in targets.items():
        wanted |= {(path, slot) for slot in np.ndindex(*shape[:int(stacked(path))])}
    unused = sorted(describe(k) for k in set(shapes) - used)
    missing = sorted(e.source for e in table if e.source not in shapes)
    unproduced = sorted(_slot_name(*s) for s in wanted - produced)
    unknown = sorted(_slot_name(*s) for s in produced - wanted)
    for label, keys in (("unused source keys", unused), ("missing keys", missing),
                        ("target entries without a source", unproduced),
                        ("table entries without a target", unknown)):
        if keys:
            problems.append(f"{label}: {format_keys(keys)}")
    for e in table:
        slot = slot_of(e.index)
        if e.source in shapes and (e.target, slot) in wanted:
            slot_shape = tuple(targets[e.target])[len(slot):]
            accepted = [tuple(s) for s in rules[e.rule].source_shapes(slot_shape)]
            if tuple(shapes[e.source]) not in accepted:
                expected = " or ".join(str(s) for s in accepted)
                problems.append(f"{describe(e.source)}: shape {tuple(shapes[e.source])} in "
                                f"file, expected {expected}")
    if problems:
        raise ConversionError(source, f"cannot convert to {what}:\n  " + "\n  ".join(problems)
                              + (f"\n  ({hint})" if hint else ""))


def fill_targets(get: Callable[[str], np.ndarray], targets: dict, table: Sequence[Entry],
                 rules: dict, dtype=np.float32) -> dict:
    """`{path: array}`: each target allocated once and filled tensor by tensor (peak memory ≈
    the result plus one source tensor). Run `check_layout` first."""
    out = {path: np.empty(tuple(shape), dtype) for path, shape in targets.items()}
    for e in table:
        dst, slot = out[e.target], slot_of(e.index)
        slot_shape = dst.shape[len(slot):]
        value = rules[e.rule].apply(np.asarray(get(e.source)), slot_shape)
        if value.shape != slot_shape:
            raise AssertionError(f"rule {e.rule} gave {value.shape} for {e.source}, "
                                 f"expected {slot_shape}")
        dst[slot] = value
    return out


# ----------------------------------------------------------------------------------------------
# Lazy tensor sources
# ----------------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a test/convert dependency
        return None
    return torch


def _to_numpy(t) -> np.ndarray:
    """A torch tensor or numpy array as numpy; floating point (bf16/fp16 included) as float32."""
    torch = _torch()
    if torch is not None and isinstance(t, torch.Tensor):
        t = t.detach()
        return t.to(torch.float32).numpy() if t.is_floating_point() else t.numpy()
    a = np.asarray(t)
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def strip_prefix(source: "TensorSource", prefixes: Sequence[str]) -> "TensorSource":
    """The same tensors without the first of `prefixes` that every key carries (if any)."""
    keys = list(source.keys())
    for prefix in prefixes:
        if keys and all(k.startswith(prefix) for k in keys):
            return source.renamed({k: k[len(prefix):] for k in keys})
    return source


class TensorSource:
    """Shapes of every tensor without reading them; `get(key)` reads one tensor (float32)."""

    def __init__(self, path, shapes: dict, getters: dict, closers=(), file_keys=None):
        self.path = path
        self.shapes = shapes
        self._getters = getters
        self._closers = list(closers)
        self._file_keys = file_keys or {}   # {key: the file's key} where a view renamed it

    def keys(self):
        return self.shapes.keys()

    def get(self, key: str) -> np.ndarray:
        """Tensor `key` as numpy; a floating-point tensor with NaN/Inf is refused, named."""
        value = _to_numpy(self._getters[key]())
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise ConversionError(self.path, f"tensor {self.describe(key)} has {bad} NaN/Inf "
                                  f"value(s) of {value.size}; refusing to convert it")
        return value

    def view(self, shapes: dict, getters: dict) -> "TensorSource":
        """Other tensors (`getters` may read this source's) under this source's path; closing
        the view closes this source."""
        return TensorSource(self.path, shapes, getters, [self.close])

    def renamed(self, names: dict) -> "TensorSource":
        """The same tensors under new names (`{old: new}`); `describe` still shows file keys."""
        view = self.view({names[k]: v for k, v in self.shapes.items()},
                         {names[k]: (lambda k=k: self.get(k)) for k in self.shapes})
        view._file_keys = {new: self._file_keys.get(old, old) for old, new in names.items()
                           if self._file_keys.get(old, old) != new}
        return view

    def describe(self, key: str) -> str:
        """`key`, with the file's key when a rename changed it (for error messages)."""
        return f"{key} (file key {self._file_keys[key]})" if key in self._file_keys else key

    def close(self):
        for c in self._closers:
            c()
        self._closers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path) -> "TensorSource":
        path = Path(path)
        if path.is_dir():
            return cls._open_folder(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint file or folder not found")
        if path.name.endswith(".index.json"):
            return cls._open_index(path)
        if path.suffix == SAFETENSORS_SUFFIX:
            return cls.merged_safetensors([path], path)
        return cls.open_torch(path)

    @classmethod
    def _open_folder(cls, folder: Path) -> "TensorSource":
        indices = sorted(folder.glob(f"*{SAFETENSORS_SUFFIX}.index.json"))
        if len(indices) > 1:
            raise ConversionError(folder, "several index files: "
                                  + format_keys(p.name for p in indices))
        if indices:
            return cls._open_index(indices[0])
        files = sorted(folder.glob(f"*{SAFETENSORS_SUFFIX}"))
        if not files:
            files = sorted(p for s in TORCH_SUFFIXES for p in folder.glob(f"*{s}"))
        if len(files) == 1:
            return cls.open(files[0])
        if not files and (folder / "transformer").is_dir():
            return cls._open_folder(folder / "transformer")
        if not files:
            raise ConversionError(folder, "no *.safetensors(.index.json), *.bin or *.pt file")
        raise ConversionError(folder, "several weight files and no *.safetensors.index.json: "
                              + format_keys(p.name for p in files))

    @classmethod
    def _open_index(cls, index: Path) -> "TensorSource":
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConversionError(index, f"not a safetensors index ({type(e).__name__}: {e})")
        files = sorted({index.parent / f for f in weight_map.values()})
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ConversionError(index, f"shard files listed but not found: {format_keys(absent)}")
        source = cls.merged_safetensors(files, index)
        where = {k: v for k, v in source._where.items()}
        wrong = sorted(k for k, f in weight_map.items() if where.get(k) != (index.parent / f))
        unlisted = sorted(set(where) - set(weight_map))
        if wrong or unlisted:
            source.close()
            problems = []
            if wrong:
                problems.append("keys not in the shard the index names: " + format_keys(wrong))
            if unlisted:
                problems.append("keys in shards but not in the index: " + format_keys(unlisted))
            raise ConversionError(index, "; ".join(problems))
        return source

    @classmethod
    def merged_safetensors(cls, files: Sequence[Path], label) -> "TensorSource":
        """Several safetensors files seen as one source (a key in two files is an error)."""
        from safetensors import safe_open
        framework = "pt" if _torch() is not None else "numpy"
        shapes, getters, closers, where = {}, {}, [], {}
        for f in files:
            try:
                handle = safe_open(str(f), framework=framework)
                handle.__enter__()
            except Exception as e:  # noqa: BLE001 - any unreadable content is one clear error
                for c in closers:
                    c()
                raise ConversionError(f, f"cannot read safetensors ({type(e).__name__}: {e})")
            closers.append(lambda h=handle: h.__exit__(None, None, None))
            for k in handle.keys():
                if k in shapes:
                    for c in closers:
                        c()
                    raise ConversionError(label, f"key {k!r} appears in {where[k].name} and "
                                          f"{f.name}")
                shapes[k] = tuple(handle.get_slice(k).get_shape())
                getters[k] = (lambda h=handle, k=k: h.get_tensor(k))
                where[k] = f
        source = cls(label, shapes, getters, closers)
        source._where = where
        return source

    @classmethod
    def open_torch(cls, path, wrappers: Sequence[str] = WRAPPER_KEYS) -> "TensorSource":
        """A torch state-dict file; a dict holding the state dict under one of `wrappers` is
        unwrapped."""
        path = Path(path)
        torch = _torch()
        if torch is None:
            raise ConversionError(path, "reading torch files needs torch")
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ConversionError(path, f"cannot be read by torch.load(weights_only=True) "
                                  f"({type(e).__name__}: {e})") from e
        for key in wrappers:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not obj:
            raise ConversionError(path, f"expected a state dict, got {type(obj).__name__}")
        others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        if others:
            raise ConversionError(path, f"not a state dict: entries {format_keys(others, 8)} "
                                  "are not tensors")
        shapes = {k: tuple(v.shape) for k, v in obj.items()}
        getters = {k: (lambda v=v: v) for k, v in obj.items()}
        return cls(path, shapes, getters)
