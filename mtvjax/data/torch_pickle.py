"""Torch tensors in pose pickles, rebuilt as numpy arrays without importing torch.

The reference pose-extraction script pickles NLF outputs as torch tensors (often on a GPU). A
pickled tensor names `torch._utils._rebuild_tensor_v2` with its storage, offset, size and stride;
the storage names `torch.storage._load_from_bytes` with a whole `torch.save` stream (the legacy
sequence of pickles followed by raw storage data, or a zip archive) whose pickles name storage
classes such as `torch.FloatStorage` through persistent ids `('storage', type, key, location,
numel)`. `torch_global` stands in for exactly these names; the embedded streams are read by the
same restricted unpickler (`make_unpickler`), so code hidden in them is refused as well. The
device tag ('cpu', 'cuda:0', ...) is ignored: every tensor becomes a numpy array on the host.
Every tensor's size is counted against the file's `DecodeBudget` before it is copied out.
"""
from __future__ import annotations

import dataclasses
import io
import zipfile

import numpy as np

from mtvjax.data.load_limits import DecodeBudget
from mtvjax.data.motion_errors import UnsafePickleError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class StorageType:
    """What a pickled `torch.<name>Storage` class stands for."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass
class Storage:
    """A flat run of elements; `data` is None until the stream's data section is read."""

    type: StorageType
    numel: int
    data: np.ndarray | None = None


def _fail(budget: DecodeBudget, problem: str):
    raise UnsafePickleError(f"{budget.source}: refusing to load, {problem}")


def _ints(values, budget: DecodeBudget, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        _fail(budget, f"a pickled tensor has an invalid {what} {values!r}")
    return tuple(values)


def rebuild_tensor(budget: DecodeBudget, storage, offset, size, stride, requires_grad=False,
                   backward_hooks=None, metadata=None) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2` as a numpy copy of the tensor's elements."""
    if not isinstance(storage, Storage) or storage.data is None:
        _fail(budget, "a pickled tensor has no storage data")
    (offset,) = _ints((offset,), budget, "offset")
    size, stride = _ints(size, budget, "size"), _ints(stride, budget, "stride")
    if len(size) != len(stride):
        _fail(budget, f"a pickled tensor has size {size} but stride {stride}")
    dtype = storage.data.dtype
    numel = int(np.prod(size, dtype=object))
    budget.add(numel * dtype.itemsize, "a tensor")
    if numel == 0:
        out = np.zeros(size, dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.data.size:
            _fail(budget, f"a pickled tensor of size {size} reaches past its storage of "
                  f"{storage.data.size} elements")
        out = np.lib.stride_tricks.as_strided(
            storage.data[offset:], size, [s * dtype.itemsize for s in stride]).copy()
    if storage.type.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _latin1(budget: DecodeBudget, text, encoding):
    """`_codecs.encode`, which protocol-2 pickles use for bytes; only the latin-1 form."""
    if not isinstance(text, str) or encoding != "latin1":
        _fail(budget, f"'_codecs.encode' with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class _StorageIds:
    """`persistent_load` for a torch.save stream: one `Storage` per key."""

    def __init__(self, budget: DecodeBudget, read=None):
        self.budget = budget
        self.read = read  # read(key, storage) fills a new storage at once (zip archives)
        self.storages: dict[str, Storage] = {}

    def __call__(self, pid) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            _fail(self.budget, f"unknown persistent id {pid!r:.80}")
        _, stype, key, location, numel = pid[:5]
        if (not isinstance(stype, StorageType) or not isinstance(key, str)
                or not isinstance(location, str) or len(pid) == 6 and pid[5] is not None):
            _fail(self.budget, f"invalid storage id {pid!r:.80}")
        (numel,) = _ints((numel,), self.budget, "storage size")
        if key not in self.storages:
            self.storages[key] = Storage(stype, numel)
            if self.read is not None:
                self.read(key, self.storages[key])
        storage = self.storages[key]
        if storage.type != stype or storage.numel != numel:
            _fail(self.budget, f"storage {key!r} is declared twice differently")
        return storage


def _fill(storage: Storage, raw: bytes, budget: DecodeBudget, key: str):
    nbytes = storage.numel * storage.type.dtype.itemsize
    if len(raw) < nbytes:
        _fail(budget, f"storage {key!r} holds {len(raw)} bytes, fewer than its {nbytes}")
    storage.data = np.frombuffer(raw, storage.type.dtype, storage.numel)


def _load_legacy(data: bytes, budget: DecodeBudget, make_unpickler):
    stream = io.BytesIO(data)
    if make_unpickler(stream).load() != LEGACY_MAGIC:
        _fail(budget, "embedded torch data is not a torch.save stream")
    make_unpickler(stream).load()  # protocol version
    info = make_unpickler(stream).load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        _fail(budget, "embedded torch data is not little-endian")
    ids = _StorageIds(budget)
    obj = make_unpickler(stream, ids).load()
    keys = make_unpickler(stream).load()
    if not isinstance(keys, list):
        _fail(budget, "embedded torch data has no storage list")
    for key in keys:
        if key not in ids.storages:
            _fail(budget, f"embedded torch data stores unknown storage {key!r:.40}")
        storage = ids.storages[key]
        numel = int.from_bytes(stream.read(8), "little")
        if numel != storage.numel:
            _fail(budget, f"storage {key!r} holds {numel} elements, {storage.numel} declared")
        _fill(storage, stream.read(numel * storage.type.dtype.itemsize), budget, key)
    return obj


def _load_zip(data: bytes, budget: DecodeBudget, make_unpickler):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            _fail(budget, "embedded torch zip archive has no single data.pkl")
        prefix = pickles[0][:-len("data.pkl")]

        def read(key: str, storage: Storage):
            member = f"{prefix}data/{key}"
            if member not in names:
                _fail(budget, f"embedded torch zip archive lacks {member!r:.80}")
            info = archive.getinfo(member)
            budget.add(info.file_size, f"storage {key!r}")
            _fill(storage, archive.read(info), budget, key)

        return make_unpickler(io.BytesIO(archive.read(pickles[0])), _StorageIds(budget, read)).load()


def load_torch_save(budget: DecodeBudget, make_unpickler, data) -> object:
    """The object of a `torch.save` byte stream (legacy or zip), read with `make_unpickler`."""
    if not isinstance(data, (bytes, bytearray)):
        _fail(budget, f"'torch.storage._load_from_bytes' given {type(data).__name__}")
    budget.add(len(data), "embedded torch data")
    loader = _load_zip if bytes(data[:2]) == b"PK" else _load_legacy
    return loader(bytes(data), budget, make_unpickler)


def torch_global(module: str, name: str, budget: DecodeBudget, make_unpickler):
    """The stand-in for a torch name a pose pickle may reference, or None when it is not one."""
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return lambda *args: rebuild_tensor(budget, *args)
    if (module, name) == ("torch.storage", "_load_from_bytes"):
        return lambda data: load_torch_save(budget, make_unpickler, data)
    if (module, name) == ("_codecs", "encode"):
        return lambda text, encoding: _latin1(budget, text, encoding)
    if module == "torch" and name in _STORAGE_DTYPES:
        return StorageType(name)
    return None
