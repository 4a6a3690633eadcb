"""Resumable run folders: a manifest, atomic chunk files and their SHA-256 checksums.

The dataset index range [0, N) is cut into chunks of ``S`` samples; chunk ``k`` holds
[k·S, min((k+1)·S, N)). Layout of a run folder::

    manifest.json          run id, settings, model + data fingerprints, chunk size, status,
                           the class-pass widths every rank and resumed run uses (engine),
                           and (once complete) every chunk's SHA-256
    chunks/000042.npz      the arrays of chunk 42, written atomically (temp file + fsync + rename)
    chunks/000042.json     its commit record {"run", "chunk", "start", "stop", "sha256", "used"},
                           written only after the .npz is in place

    .lock                  held (flock) by the process that opened the run, until it closes it

A chunk counts as done only when its record exists, names this run and range, and the SHA-256
of the .npz bytes matches the record. A process killed at any instant (``kill -9`` included)
leaves either no record (the chunk is recomputed) or a complete pair; a truncated or altered
.npz fails its checksum and is recomputed, and temp files it left are removed by the next
run. A manifest with another run id (other settings, model or data) is refused unless the
caller asks to overwrite; an unreadable manifest is rebuilt, keeping the chunks whose records
name this run. A second run on a folder whose lock is held is refused (``RunFolderBusy``);
the lock dies with its process, so a killed run never blocks the next one.

curvfast deletes or overwrites only files it wrote and recognises as its own: its manifest, merged
results, temp files (``.tmp-<random><one of its names>``), and in ``chunks/`` only files named like
chunks whose content is a chunk (.npz holding ``index``) or a commit record. Anything else in
``chunks/`` (a foreign file, a folder, a symlink), a symlinked ``chunks/``, model folder or
``.lock``, or a ``.lock`` holding other text, is refused (``ConfigError``) before anything is
written, so nothing is written outside the run folder and the user's files stay byte for byte.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import os
import re
import socket
import stat
import zipfile
import time

import numpy as np

from .errors import ChunkError, ConfigError, RunFolderBusy
from .io import atomic_write_bytes, write_json

__all__ = ["RunFolder", "ChunkError", "RunFolderBusy", "run_id"]

MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT = 1
MEASURED = ("pass_widths", "batch_size")  # measured by the first run, kept by every resumed one
_CHUNK_NAME = re.compile(r"\d{6}\.(npz|json)")
_TEMP_NAME = re.compile(r"\.tmp-[a-z0-9_]+(?:manifest\.json|results\.json|scores\.npz|samples\.(?:csv|parquet)|"
                        r"\d{6}\.(?:npz|json))")
_LOCK_TEXT = re.compile(rb"(pid \d+ on [^\n]*)?")  # what _lock writes (or a new, empty file)
_MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # the engine's rule for model (folder) names
_RECORD_KEYS = {"run", "chunk", "start", "stop", "sha256", "used"}


def run_id(identity: dict) -> str:
    """SHA-256 of the canonical JSON of everything that determines the numbers.

    Args:
        identity: Settings, fingerprints and chunk size (keys sorted; values not JSON-ready are written as ``str``).

    Returns:
        The hex digest, the run id.
    """
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Human-readable leaf differences between two JSON-like objects."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if old != new:
        short = lambda v: (v[:12] + "…") if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
        return [f"{prefix[:-1]}: {short(old)!r} -> {short(new)!r}"]
    return []


def _is_chunk(path: str) -> bool:
    """Whether a file named like a chunk is one of curvfast's commit records, or chunks.

    A chunk is an .npz holding ``index``, or any file beside a commit record (a truncated or altered chunk, recomputed).
    """
    if path.endswith(".npz"):
        try:
            with zipfile.ZipFile(path) as z:  # reads the central directory only
                if "index.npy" in z.namelist():
                    return True
        except (OSError, zipfile.BadZipFile):
            pass
        return _is_chunk(path[:-4] + ".json")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and _RECORD_KEYS <= set(record)


class RunFolder:
    """Chunk bookkeeping for one run folder (see the module docstring).

    ``identity`` is everything that determines the numbers (settings, model and data
    fingerprints, chunk size); its hash is the run id written into the manifest and every record.

    Args:
        out: The run folder (created on :meth:`open`).
        identity: Everything that determines the numbers; hashed by :func:`run_id`.
        size: The number of samples N.
        chunk_size: Samples per chunk S, a positive int.
        per_model: The merged results go to one folder per model (``out/<name>/``), not to ``out`` itself.

    Raises:
        ConfigError: When ``chunk_size`` is not a positive int.
    """

    def __init__(self, out: str, identity: dict, size: int, chunk_size: int, per_model: bool = True):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive int (got {chunk_size!r})")
        self.out = out
        self.identity = identity
        self.size = size
        self.chunk_size = chunk_size
        self.num_chunks = -(-size // chunk_size)
        self.run = run_id(identity)
        self.chunk_dir = os.path.join(out, "chunks")
        self.model_dirs = [os.path.join(out, str(m)) for m in identity.get("models", {})] if per_model else []
        self._lock_fd = None

    def bounds(self, k: int) -> tuple[int, int]:
        """The sample range of chunk ``k``.

        Args:
            k: The chunk id.

        Returns:
            ``(start, stop)`` = ``(k·S, min((k+1)·S, N))``.
        """
        return k * self.chunk_size, min((k + 1) * self.chunk_size, self.size)

    def _paths(self, k: int) -> tuple[str, str]:
        stem = os.path.join(self.chunk_dir, f"{k:06d}")
        return stem + ".npz", stem + ".json"

    # -- start of a run (one process) -------------------------------------------------------
    def open(self, overwrite: bool = False) -> dict:
        """Take the folder's lock, check or create the manifest, drop stale temp files and bad chunks.

        Call from one process, and ``close()`` when the run ends.

        Args:
            overwrite: Discard a previous run with other settings instead of refusing.

        Returns:
            ``{"todo": [chunk ids], "done": n, "corrupt": [chunk ids], "pass_widths": ..., "batch_size": ...}``
            (what the run measured and recorded, None for a new one).

        Raises:
            RunFolderBusy: Another process holds the folder's lock.
            ConfigError: The folder holds another run (or unchunked results) and ``overwrite`` is False; or it holds
                files curvfast did not write where it would write (``chunks/``, ``.lock``), or symlinks there.
        """
        self._lock()
        try:
            return self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (also released when the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _foreign(self, path: str, what: str) -> ConfigError:
        """The error for a path in the run folder that curvfast did not write and must not touch."""
        return ConfigError(
            f"run folder {self.out!r}: {os.path.relpath(path, self.out)!r} {what}, which curvfast did not write and "
            "will not delete or write through; move it out of the run folder (or remove it), or choose another out "
            "folder"
        )

    def _lock(self) -> None:
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, LOCK)
        try:  # O_NOFOLLOW: a symlinked .lock would truncate the file it points to
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            if os.path.islink(path):
                raise self._foreign(path, "is a symlink") from None
            raise self._foreign(path, f"cannot be opened as a lock file ({err.strerror})") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(fd)
            raise self._foreign(path, "is not a plain file" if not stat.S_ISREG(info.st_mode) else
                                "has other hard links")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise RunFolderBusy(
                f"run folder {self.out!r} is in use by another run ({holder}); wait for it to finish, "
                "or choose another out folder"
            ) from None
        text = os.read(fd, 4097)
        if len(text) > 4096 or not _LOCK_TEXT.fullmatch(text):
            os.close(fd)
            raise self._foreign(path, "holds other text (not curvfast's lock)")
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._lock_fd = fd

    def _check_ours(self) -> None:
        """Refuse, before anything is written, a run folder where curvfast would touch files it did not write."""
        for folder in [self.chunk_dir] + self.model_dirs:
            if os.path.islink(folder):
                raise self._foreign(folder, "is a symlink")
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise self._foreign(folder, "is not a folder")
        if not os.path.isdir(self.chunk_dir):
            return
        with os.scandir(self.chunk_dir) as entries:
            for entry in entries:
                if entry.is_symlink():
                    raise self._foreign(entry.path, "is a symlink")
                if not entry.is_file():
                    raise self._foreign(entry.path, "is a folder")
                ours = _TEMP_NAME.fullmatch(entry.name) or _CHUNK_NAME.fullmatch(entry.name) and _is_chunk(entry.path)
                if not ours:
                    raise self._foreign(entry.path, "is not a chunk file or record")

    def _open(self, overwrite: bool) -> dict:
        self._check_ours()
        manifest_path = os.path.join(self.out, MANIFEST)
        old = self._read_manifest(manifest_path)
        rebuild = old is not None and old.get("unreadable", False)  # chunk records name their run: keep ours
        if rebuild:
            old = None
        found = [f for f in self._merged_files({}) if os.path.lexists(f)]
        if old is None and not rebuild and found and not overwrite:
            raise ConfigError(
                f"run folder {self.out!r} holds {', '.join(os.path.relpath(f, self.out) for f in found[:3])} without a "
                "manifest (scores of a run that is not resumable, or your own files); move them out of the folder, "
                "pass overwrite=True (--overwrite) to replace them, or choose another out folder"
            )
        if old is not None and old.get("run") != self.run:
            if not overwrite:
                diffs = _differences(old.get("identity", {}), self.identity) or ["format or run id"]
                raise ConfigError(
                    f"run folder {self.out!r} was started with different settings, model or data "
                    f"({'; '.join(diffs[:6])}{' …' if len(diffs) > 6 else ''}); rerun the original command to "
                    "resume it, choose another out folder, or pass overwrite=True (--overwrite) to discard it"
                )
            self._clear(old)
            old = None
        elif old is None and not rebuild:
            self._clear({})
        write_json(manifest_path, {
            "format": FORMAT, "run": self.run, "identity": self.identity, "status": "running",
            "size": self.size, "chunk_size": self.chunk_size, "num_chunks": self.num_chunks,
            "created": old["created"] if old else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{key: old[key] for key in MEASURED if old and key in old},
        })
        for folder in [self.out, self.chunk_dir] + self.model_dirs:
            for tmp in glob.glob(os.path.join(glob.escape(folder), ".tmp-*")):
                if _TEMP_NAME.fullmatch(os.path.basename(tmp)) and not os.path.islink(tmp) and os.path.isfile(tmp):
                    os.unlink(tmp)  # left by a process killed mid-write
        todo, corrupt = [], []
        for k in range(self.num_chunks):
            state = self._state(k)
            if state != "ok":
                todo.append(k)
                if state == "corrupt":
                    corrupt.append(k)
                for path in self._paths(k):
                    if os.path.exists(path):
                        os.unlink(path)
        return {"todo": todo, "done": self.num_chunks - len(todo), "corrupt": corrupt,
                **{key: old.get(key) if old else None for key in MEASURED}}

    def _read_manifest(self, path: str) -> dict | None:
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = None
        return manifest if isinstance(manifest, dict) else {"run": None, "unreadable": True}

    def _clear(self, old: dict) -> None:
        """Remove what a previous run wrote here (chunks, merged results), nothing else."""
        merged = self._merged_files(old) + [os.path.join(self.out, MANIFEST)]
        for path in glob.glob(os.path.join(glob.escape(self.chunk_dir), "*")) + merged:
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)  # a symlink itself, never what it points to

    def _merged_files(self, old: dict) -> list[str]:
        """The merged results a run writes here (and the one described by ``old``, a manifest, wrote)."""
        names = set(old.get("identity", {}).get("models", {})) | set(self.identity.get("models", {}))
        names = {str(m) for m in names if re.fullmatch(_MODEL_NAME, str(m))}  # an edited manifest: never '../x'
        merged = [os.path.join(self.out, name) for name in ("scores.npz", "results.json")]
        return merged + [os.path.join(self.out, str(m), f) for m in sorted(names)
                         for f in ("scores.npz", "results.json")
                         if not os.path.islink(os.path.join(self.out, str(m)))]

    def _state(self, k: int) -> str:
        """``"ok"``, ``"missing"`` (never committed) or ``"corrupt"``."""
        npz, rec = self._paths(k)
        if not os.path.exists(rec):
            return "missing"
        try:
            self._load(k)
        except ChunkError:
            return "corrupt"
        return "ok"

    # -- chunks (any process) -----------------------------------------------------------------
    def write(self, k: int, arrays: dict[str, np.ndarray], used: dict) -> str:
        """Write chunk ``k`` atomically, then its commit record.

        Args:
            k: The chunk id.
            arrays: The chunk's arrays (saved with ``np.savez``; ``index`` must hold the chunk's sample range).
            used: Recorded in the commit record: what computed the chunk, by model name (the engine merges it).

        Returns:
            The SHA-256 (hex) of the .npz bytes.
        """
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        start, stop = self.bounds(k)
        npz, rec = self._paths(k)
        atomic_write_bytes(npz, data)
        write_json(rec, {"run": self.run, "chunk": k, "start": start, "stop": stop, "sha256": digest, "used": used})
        return digest

    def _load(self, k: int) -> tuple[dict[str, np.ndarray], dict]:
        npz, rec = self._paths(k)
        try:
            with open(rec) as f:
                record = json.load(f)
            with open(npz, "rb") as f:
                data = f.read()
        except (OSError, ValueError) as err:
            raise ChunkError(f"chunk {k} in {self.chunk_dir!r} is unreadable ({err})") from err
        start, stop = self.bounds(k)
        if (record.get("run"), record.get("chunk"), record.get("start"),
                record.get("stop")) != (self.run, k, start, stop):
            raise ChunkError(f"chunk {k} in {self.chunk_dir!r} belongs to another run or range")
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise ChunkError(f"chunk {k} in {self.chunk_dir!r} fails its SHA-256 check (truncated or altered)")
        with np.load(io.BytesIO(data)) as z:
            arrays = {name: z[name] for name in z.files}
        if not np.array_equal(arrays.get("index"), np.arange(start, stop)):
            raise ChunkError(f"chunk {k} in {self.chunk_dir!r} does not hold samples [{start}, {stop})")
        return arrays, record

    def read(self, k: int) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and commit record of chunk ``k``, checksum verified.

        Args:
            k: The chunk id.

        Returns:
            ``(arrays, record)``: the .npz arrays by name and the commit record.

        Raises:
            ChunkError: When the chunk is missing, unreadable, belongs to another run or range, fails its SHA-256
                check or does not hold its samples.
        """
        if not os.path.exists(self._paths(k)[1]):
            raise ChunkError(
                f"chunk {k} is missing from {self.chunk_dir!r}; with several nodes, the out folder must be on a "
                "file system that every node shares"
            )
        return self._load(k)

    def record(self, **fields: object) -> None:
        """Add ``fields`` to the manifest (atomically; from one process).

        Args:
            **fields: JSON-ready entries merged into the manifest.
        """
        path = os.path.join(self.out, MANIFEST)
        manifest = self._read_manifest(path) or {}
        manifest.update(fields)
        write_json(path, manifest)

    def finish(self, checksums: dict[int, str], extra: dict) -> None:
        """Mark the run complete and list every chunk's checksum in the manifest.

        Args:
            checksums: The SHA-256 of every chunk, by chunk id.
            extra: More JSON-ready manifest entries.
        """
        self.record(status="complete", chunks={f"{k:06d}": checksums[k] for k in sorted(checksums)}, **extra)
