"""Segmenting many images on a Ray cluster with Ray Data: resumable, fault tolerant, one writer.

`segment(learned, inputs, out)` (the CLI's `slimeseg segment ... --ray [ADDRESS]`) runs the
one segment job (`slimeseg.job`) on Ray Data. The driver plans it (`SegmentJob.plan`: lists the
inputs, names their outputs) and drops those already finished (one listing of the output
folder); the rest flows through the job's three steps, each a plain function of a batch of rows:

    load     `SegmentJob.read`: decode each image                       CPU tasks
    predict  a pool of actors, each holding one `Segmenter`             one GPU per actor,
             (`SegmentJob.segmenter`, then `predict` image by image)    or CPUs on CPU nodes
    write    `SegmentJob.write` / `SegmentWriter.write_part`: PNGs       CPU tasks
             (+ overlays) or one Parquet part per batch, atomically

and the driver tallies what comes back (written / already there / failed with a one-line
reason), writes `errors.jsonl` (or `errors.parquet`) and prints one line: images, seconds,
images/s. On GPU clusters loading and writing are CPU tasks beside the GPU actors, so a GPU never
waits for decoding or PNG encoding. On CPU-only clusters all three steps run inside the actor:
every step would compete for the same cores anyway, and images then never travel through the
object store.

Guarantees:
- Resumable and idempotent: a re-run skips inputs whose outputs all exist; writes are atomic
  (temp file + rename, on every worker), so nothing partial is ever visible, and a killed
  process's temp files are removed when the run ends.
- A per-file problem (unreadable, corrupt, too large, out of memory) becomes that input's error
  row and never stops the job.
- Fault tolerance is Ray Data's own, not ours: its actor pool creates actors with
  `max_restarts=-1` and `max_task_retries=-1` and its tasks retry system failures
  (`max_retries=-1`), so a worker process that dies is restarted and its batch redone. A redone
  batch writes the same files (PNG: the same names; Parquet: the part is named by a digest of its
  batch), so every output exists exactly once. (Setting these per call would need
  `map_batches(**ray_remote_args)`, deprecated in Ray 2.60, so the defaults are relied on and the
  kill test checks them.)
- The label maps equal the single process's bit for bit: each actor calls `Segmenter.predict`
  one image at a time, as `slimeseg segment` does. `batch_size` > 1 uses `predict_batch`
  (several images per UNet pass: faster on GPUs), whose batched arithmetic changes a few
  pixels: with the tiny test model, 8 images per pass, 11 of 20 images differed from `predict`
  in 49 of their 84,480 pixels at 64 px (9 pixels at 256 px). Thread counts changed nothing
  there (1 vs 2 torch threads: equal at 64, 128 and 256 px).

Requirements on a cluster: every node has slimeseg (and the model, or its hub cache) installed,
and sees the input images and the output folder at the same paths (a shared file system).
`import ray` happens only here, inside `segment`, so the base package works without it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, SlimeError, reason
from .job import Result, SegmentJob, list_inputs
from .video import is_video

__all__ = ["Result", "SegmentWorker", "list_inputs", "segment"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'slimeseg[ray]'"
MAX_ROWS_PER_BLOCK = 64  # a retried block redoes at most this many images

# a row's status as it travels through the steps
PENDING, EXISTS, FAILED, WRITTEN, FATAL = "", "exists", "failed", "written", "fatal"


# ---------------------------------------------------------------------------- the job
def segment(learned: Any, inputs: str | os.PathLike | Iterable[str | os.PathLike],
            out: str | os.PathLike, *, format: str = "png", overlays: bool = True,
            overwrite: bool = False, instances: bool = False, address: str | None = None,
            workers: int | None = None,
            batch_size: int = 1, model: str | None = None, revision: str | None = None,
            device: str | None = None, dtype: str | None = None, model_config: str | None = None,
            max_image_pixels: int | None = None, io_tasks: bool | None = None,
            cpus_per_worker: int | None = None, progress: bool = True, echo: Any = print,
            frames: str | None = None, **overrides: Any) -> Result:
    """Segment `inputs` with `learned` (an artifact or its file) into `out` on a Ray cluster.

    `address`: the cluster (`"auto"`, `"HOST:6379"`, `"ray://HOST:10001"`); None connects to
    the cluster `RAY_ADDRESS` names, else starts a local one for this call (a cluster this
    process already joined with `ray.init` is used as is). `workers`: actors in the pool
    (default: one per GPU of the cluster, or one per CPU on CPU-only clusters, whose CPUs are
    shared out among them as torch threads). `format`: "png" (label maps `NAME.png`, overlays
    unless `overlays=False`), "coco" (those, then `out/coco.json` assembled on the driver;
    `instances` as in `job.segment`) or "parquet" (`out/labels/part-*.parquet`). `batch_size`: images per
    UNet pass (1: bitwise the single process's labels). `io_tasks`: load and write as separate
    CPU tasks (default: on GPU clusters only). `cpus_per_worker`: CPUs (torch threads) of a
    worker on CPU-only clusters (default: the CPUs shared out among the workers). `model`,
    `revision`, `device`, `dtype`, `model_config` are `Segmenter.from_learned`'s; `max_image_pixels` is
    `--max-image-pixels` (0: no limit); `overrides` are SlimeConfig settings, as
    `Segmenter.predict` takes them (the CLI passes the flags typed, as without `--ray`).
    Clips (PNG format only) travel whole, one row each: the worker that gets one streams it
    through `SegmentJob.segment_clip` (the temporal carry needs the frames in order, and the
    clip's frames then never cross the object store); `frames` is `--frames`.
    """
    t0 = time.perf_counter()
    ray = _import_ray()
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    job = SegmentJob.plan(learned, inputs, out, format=format, overlays=overlays,
                          overrides=overrides, instances=instances, frames=frames)
    job.prepare(overwrite)
    todo = job.todo(overwrite)
    result = Result(job.writer.out_dir, len(job.inputs), skipped=len(job.inputs) - len(todo))
    if todo:
        started = _connect(ray, address)
        try:
            pool = _plan_pool(ray, workers, device, io_tasks, cpus_per_worker)
            result.workers = pool.workers
            _run(ray, result, job, todo, pool, batch_size=batch_size, model=model,
                 revision=revision, dtype=dtype, model_config=model_config, max_image_pixels=max_image_pixels,
                 overwrite=overwrite, progress=progress)
        finally:
            if started:
                ray.shutdown()
        job.writer.remove_temp_files()  # only a killed worker's can be left: every task has ended
    result.errors_file = job.record_errors(result.failed)
    result.coco_file = job.finish()
    result.seconds = time.perf_counter() - t0
    if echo is not None:
        echo(result.summary())
    return result


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--ray needs Ray Data, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster; True if this call started (and so must stop) the connection."""
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None)
    else:  # a local cluster for this run only
        ray.init(include_dashboard=False)
    return True


@dataclass
class _Pool:
    workers: int
    gpus: float  # per actor
    cpus: float | None  # per actor (None: Ray's default for a GPU actor)
    device: str
    threads: int | None  # torch threads per actor on CPU
    io_tasks: bool  # load and write as separate CPU tasks
    ready: int = 0  # actors the cluster can hold now (GPUs); fewer: the pool grows as GPUs join

    def compute(self, ray: Any) -> Any:
        if self.ready and self.ready < self.workers:
            return ray.data.ActorPoolStrategy(min_size=self.ready, max_size=self.workers)
        return ray.data.ActorPoolStrategy(size=self.workers)


def _plan_pool(ray: Any, workers: int | None, device: str | None, io_tasks: bool | None,
               cpus_per_worker: int | None = None) -> _Pool:
    """The actor pool the cluster affords: one GPU per actor, or the CPUs shared out."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
    if device is not None and not (device == "cpu" or device.startswith("cuda")):
        raise InputError(f"--device {device}: with --ray use cpu or cuda (Ray gives each worker its GPU)")
    if (device or "cuda").startswith("cuda") and gpus > 0:
        if workers and workers > gpus:
            log.warning("%d workers asked for, the cluster has %d GPU(s) now: the others wait "
                        "for GPUs to join", workers, gpus)
        return _Pool(workers or gpus, gpus=1, cpus=None, device="cuda", threads=None,
                     io_tasks=True if io_tasks is None else io_tasks, ready=gpus)
    if device is not None and device.startswith("cuda"):
        raise InputError(f"--device {device}: the Ray cluster has no GPU")
    if cpus < 1:
        raise InputError("the Ray cluster has no CPU to run workers on")
    node_cpus = max(int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive"))
    io = bool(io_tasks)
    budget = cpus - 1 if io else cpus  # load and write tasks need a CPU of their own
    size = workers or max(1, budget // (cpus_per_worker or 1))
    per = cpus_per_worker or max(1, min(budget // size, node_cpus))
    if size * per > budget or per > node_cpus:
        raise InputError(f"{size} worker(s) of {per} CPU(s)" + (" and load and write tasks" if io else "")
                         + f" need more than the cluster's {cpus} CPUs (largest node: {node_cpus}); "
                         "ask for fewer workers")
    return _Pool(size, gpus=0, cpus=per, device="cpu", threads=per, io_tasks=io)


def _rows_per_block(n: int, workers: int, batch_size: int) -> int:
    """Rows per block: at least 4 blocks per worker (balance; a retry redoes little), at most
    MAX_ROWS_PER_BLOCK, a whole number of UNet batches."""
    rows = max(1, min(MAX_ROWS_PER_BLOCK, math.ceil(n / (4 * workers))))
    return math.ceil(rows / batch_size) * batch_size


def _run(ray: Any, result: Result, job: SegmentJob, todo: list[Path], pool: _Pool, *,
         batch_size: int, model: str | None, revision: str | None, dtype: str | None,
         model_config: str | None, max_image_pixels: int | None, overwrite: bool, progress: bool) -> None:
    """Build the Ray Data pipeline for `todo`, stream its status rows, fill in `result`."""
    import pyarrow as pa

    ray.data.DataContext.get_current().enable_progress_bars = progress
    rows = _rows_per_block(len(todo), pool.workers, batch_size)
    blocks = [pa.table({"path": [str(p) for p in todo[i:i + rows]],
                        "name": [job.names[p] for p in todo[i:i + rows]]})
              for i in range(0, len(todo), rows)]
    light = job.without_inputs()  # what every task and actor gets: rows carry path and name
    load = {"job": light, "skip_done": not overwrite and light.writer.format != "parquet",
            "max_image_pixels": max_image_pixels}
    actor = {"job": light, "model": model, "revision": revision, "device": pool.device,
             "dtype": dtype, "model_config": model_config, "threads": pool.threads, "batch_size": batch_size,
             "load": None if pool.io_tasks else load, "write": not pool.io_tasks,
             "keep_image": light.writer.overlays}
    ds = ray.data.from_arrow(blocks)
    if pool.io_tasks:
        ds = ds.map_batches(load_batch, fn_kwargs=load, batch_size=rows, num_cpus=1)
    ds = ds.map_batches(SegmentWorker, fn_constructor_kwargs=actor, batch_size=rows,
                        compute=pool.compute(ray),
                        num_cpus=pool.cpus, num_gpus=pool.gpus or None)
    if pool.io_tasks:
        ds = ds.map_batches(write_batch, fn_kwargs={"job": light}, batch_size=rows, num_cpus=1)
    seen: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for path, status, error in zip(batch["path"], batch["status"], batch["error"], strict=True):
            if status == FATAL:  # the model cannot load: no image would succeed
                raise SlimeError(str(error))
            if path in seen:  # cannot happen with Ray's retries; never count twice
                continue
            seen.add(path)
            if status == FAILED:
                result.failed.append((str(path), str(error)))
            else:
                result.segmented += 1
                result.predicted += status == WRITTEN
    lost = [str(p) for p in todo if str(p) not in seen]
    result.failed += [(p, "no result came back from the workers") for p in lost]


# ---------------------------------------------------------------------------- the steps
def _column(batch: dict[str, Any], key: str, fill: Any) -> list[Any]:
    return list(batch[key]) if key in batch else [fill] * len(batch["path"])


def load_batch(batch: dict[str, np.ndarray], job: SegmentJob, skip_done: bool,
               max_image_pixels: int | None) -> dict[str, np.ndarray]:
    """Step 1: decode each image (or find it already written by an earlier attempt)."""
    from .io import set_max_image_pixels

    if max_image_pixels is not None:
        set_max_image_pixels(max_image_pixels or None)
    paths, stems = list(batch["path"]), list(batch["name"])
    images, status, errors = [], [], []
    for path, stem in zip(paths, stems, strict=True):
        image, state, error = _EMPTY_IMAGE, PENDING, ""
        if skip_done and job.writer.done(stem):  # a retried batch: this one was written already
            state = EXISTS
        elif job.writer.format == "png" and is_video(path):
            pass  # a clip: the worker with the model streams it (`SegmentWorker.predict`)
        else:
            try:
                image = job.read(path)
            except Exception as exc:  # a per-file problem never stops the job
                state, error = FAILED, reason(exc, path)
        images.append(image)
        status.append(state)
        errors.append(error)
    return {"path": _objects(paths), "name": _objects(stems), "image": _objects(images),
            "status": _objects(status), "error": _objects(errors)}


def write_batch(batch: dict[str, np.ndarray], job: SegmentJob) -> dict[str, np.ndarray]:
    """Step 3: write the predicted rows through the job's writer; keep only the status columns."""
    paths, stems = list(batch["path"]), list(batch["name"])
    status, errors = list(batch["status"]), list(batch["error"])
    labels, images = list(batch["labels"]), _column(batch, "image", None)
    todo = [i for i, s in enumerate(status) if s == PENDING]
    if job.writer.format == "parquet":
        try:
            job.writer.write_part([(paths[i], stems[i], labels[i]) for i in todo], batch=paths)
            for i in todo:
                status[i] = WRITTEN
        except Exception as exc:
            for i in todo:
                status[i], errors[i] = FAILED, reason(exc, paths[i])
    else:
        for i in todo:
            try:
                job.write(stems[i], images[i], labels[i])
                status[i] = WRITTEN
            except Exception as exc:
                status[i], errors[i] = FAILED, reason(exc, paths[i])
    return {"path": _objects(paths), "status": _objects(status), "error": _objects(errors)}


class SegmentWorker:
    """Step 2, one actor of the pool: a `Segmenter` for the job's artifact, loaded once.

    On CPU-only clusters it also runs steps 1 and 3 (`load` given, `write` True), image by
    image, so images never leave the process.
    """

    def __init__(self, job: SegmentJob, model: str | None, revision: str | None, device: str,
                 dtype: str | None, threads: int | None, batch_size: int,
                 load: dict[str, Any] | None, write: bool, keep_image: bool,
                 model_config: str | None = None) -> None:
        for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(var, "error")
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.job = job
        self._model = {"model": model, "revision": revision, "device": device, "dtype": dtype,
                       "model_config": model_config}
        self._seg: Any = None
        self.batch_size = batch_size
        self.load, self.write, self.keep_image = load, write, keep_image

    @property
    def seg(self) -> Any:
        """The Segmenter, loaded for the first image to predict (a batch of inputs that all
        failed to load, as on a re-run of bad files, loads no model)."""
        if self._seg is None:
            self._seg = self.job.segmenter(**self._model)
        return self._seg

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.load is None or not self.write:  # load and write tasks do the rest
            return self.predict(batch)
        # all three steps here, one UNet batch (by default one image) at a time: one decoded image
        # in memory, not a block of them, and outputs appear steadily
        parts = []
        for start in range(0, len(batch["path"]), self.batch_size):
            chunk = {k: v[start:start + self.batch_size] for k, v in batch.items()}
            parts.append(write_batch(self.predict(load_batch(chunk, **self.load)), self.job))
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, status, errors = list(batch["path"]), list(batch["status"]), list(batch["error"])
        images = list(batch["image"])
        labels: list[np.ndarray] = [_EMPTY_LABELS] * len(paths)
        todo = [i for i, s in enumerate(status) if s == PENDING]
        try:
            seg = self.seg if todo else None
        except SlimeError as exc:  # a model that cannot load stops the job, with its reason
            todo, status, errors = [], [FATAL] * len(paths), [str(exc)] * len(paths)
        for i in [i for i in todo if is_video(paths[i])]:  # a clip, whole: read, predicted, written
            todo.remove(i)
            try:
                self.job.segment_clip(seg, Path(paths[i]), stem=str(batch["name"][i]))
                status[i] = WRITTEN
            except Exception as exc:  # a per-file problem never stops the job
                status[i], errors[i] = FAILED, reason(exc, paths[i])
                _free_device_memory()
        groups = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        for group in groups:
            if len(group) > 1:  # several images per UNet pass (not bitwise the single process's)
                try:
                    for i, m in zip(group, self.job.predict_many(seg, [images[i] for i in group]),
                                    strict=True):
                        labels[i] = m
                    continue
                except Exception:  # find the image at fault one by one
                    pass
            for i in group:
                try:  # as `slimeseg segment` does: one image, `predict`, the same label map
                    labels[i] = self.job.predict(seg, images[i])
                except Exception as exc:  # a per-file problem never stops the job
                    status[i], errors[i] = FAILED, reason(exc, paths[i])
                    _free_device_memory()
        out = {"path": _objects(paths), "name": batch["name"], "status": _objects(status),
               "error": _objects(errors), "labels": _objects(labels)}
        if self.keep_image:
            out["image"] = _objects([im if s == PENDING else _EMPTY_IMAGE
                                     for im, s in zip(images, status, strict=True)])
        return out


_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)  # the placeholder of a row without an image
_EMPTY_LABELS = np.zeros((1, 1), np.uint8)


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array (Ray Data's column of strings or of arrays of different shapes)."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # item by item: numpy would stack equal-shaped arrays
        arr[i] = v
    return arr


def _free_device_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
