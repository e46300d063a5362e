"""``smatch transfer``: the keypoints of a few annotated reference images, carried to every image of a folder.

The references are COCO keypoint annotations (:func:`simplematch.data.coco.read_coco_keypoints`). Every
image under the target folder (recursively, sorted by path; the reference images themselves excepted) gets
one COCO result per reference category: each reference's visible (v = 2) keypoints are matched into the
target with the runtime's sparse matching (:meth:`Matcher.match`, the method of the paper, with its
confidence), and the references' matches of each keypoint are combined by :func:`combine_matches`. Occluded
(v = 1) reference points are not matched: their pixel shows the occluder, not the part.

Work: every image is decoded once and encoded once -- the references' features stay cached for the whole
run, targets go through the backend in batches while the next batch is decoded in threads -- and each
target's result is streamed into the output (:mod:`simplematch.runtime.coco_results`) as soon as it is done.
An unreadable target is reported and skipped (the summary counts it). SIGINT / SIGTERM stop after the
current target and leave a valid file holding every finished target (a second Ctrl-C stops at once and
leaves what was there before); ``resume=True`` continues that file. Images are read in their stored pixel
frame (no EXIF rotation), the frame of COCO's ``width`` / ``height`` and of the reference keypoints.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import simplematch
from simplematch import signals, validate
from simplematch.confidence import CYCLE_ALPHA, DEFAULT_CONFIDENCE
from simplematch.config import DEFAULT_TRANSFER_COMBINE, TRANSFER_COMBINES
from simplematch.data.coco import CocoKeypoints, read_coco_keypoints
from simplematch.data.records import read_json_file
from simplematch.errors import SimpleMatchError
from simplematch.files import atomic_path, sha256_file
from simplematch.image import load_image
from simplematch.runtime import coco_results, review
from simplematch.runtime.infer import find_default_model
from simplematch.runtime.matcher import Features, Matcher, Prepared, check_confidence

# What a target folder's images are: the formats Pillow reads that cameras and labelling tools produce.
IMAGE_SUFFIXES = frozenset(
    (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
)
# Two references agree on a keypoint when their matches lie closer than this fraction of the target's longer
# side: the "img" PCK radius at alpha = 0.1, the same ground-truth-free radius as the cycle cue.
VOTE_ALPHA = CYCLE_ALPHA


# ------------------------------------------------------------------------------------------------------------
# Combining the references' matches
# ------------------------------------------------------------------------------------------------------------
def combine_matches(
    pred: np.ndarray, conf: np.ndarray, valid: np.ndarray, radius: float, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Several references' matches of K keypoints -> one position and one confidence per keypoint.

    ``pred`` (R, K, 2) target pixels, ``conf`` (R, K) confidences in [0, 1], ``valid`` (R, K) reference r
    has keypoint k. Returns (K, 2) positions (NaN where no reference has the keypoint) and (K,) confidences
    in [0, 1] (0 there):

    * ``best``: the most confident reference's match and its confidence;
    * ``mean``: the confidence-weighted mean position and the mean confidence;
    * ``vote``: each match is a candidate whose support is the summed confidence of the matches within
      ``radius`` of it (itself included); the best-supported candidate wins, the position is the
      confidence-weighted mean of its supporters and the confidence is its support divided by the number of
      references that have the keypoint -- agreement raises it, disagreement lowers it. With one reference,
      or when no two agree, it is ``best``.
    """
    pred = np.asarray(pred, np.float64)
    valid = np.asarray(valid, bool)
    conf = np.where(valid, np.asarray(conf, np.float64), 0.0)
    r, k = valid.shape
    count = valid.sum(axis=0)
    safe = np.where(valid[..., None], pred, 0.0)
    if method == "best":
        pick = np.argmax(np.where(valid, conf, -np.inf), axis=0)
        pos, out = pred[pick, np.arange(k)], conf[pick, np.arange(k)]
    elif method in ("mean", "vote"):
        if method == "mean":
            members = valid
            out = conf.sum(axis=0) / np.maximum(count, 1)
        else:
            dist = np.linalg.norm(pred[:, None] - pred[None, :], axis=-1)  # (R, R, K); NaN never agrees
            near = (dist <= radius) & valid[:, None] & valid[None, :]  # near[i, j]: j supports candidate i
            support = np.where(valid, (near * conf[None]).sum(axis=1), -np.inf)  # (R, K)
            pick = np.argmax(support, axis=0)
            members = near[pick, :, np.arange(k)].T  # (R, K): the winner's supporters
            out = np.where(count > 0, support[pick, np.arange(k)], 0.0) / np.maximum(count, 1)
        weight = conf * members
        total = weight.sum(axis=0)
        # all supporters at confidence 0: their plain mean (a weighted mean is undefined)
        weight = np.where(total > 0, weight, members.astype(np.float64))
        pos = (weight[..., None] * safe).sum(axis=0) / np.maximum(weight.sum(axis=0), 1e-300)[:, None]
    else:
        raise SimpleMatchError(
            f"unknown combination '{method}'", f"use one of {', '.join(TRANSFER_COMBINES)}"
        )
    has = count > 0
    return np.where(has[:, None], pos, np.nan), np.clip(np.where(has, out, 0.0), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------
# References and targets
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Reference:
    """One reference object: its image's features, its (K, 2) keypoints and which are matched (v = 2)."""

    object_id: int
    image_id: int
    category_id: int
    features: Features
    kps: np.ndarray
    usable: np.ndarray


def load_references(
    matcher: Matcher, coco: CocoKeypoints
) -> tuple[dict[int, list[Reference]], dict[int, np.ndarray]]:
    """Reference objects by category (file order) and the decoded reference images; each reference image
    is decoded and encoded once, however many objects it holds."""
    image_ids = list(dict.fromkeys(o.image_id for o in coco.objects))
    rgb = {i: load_image(coco.images[i].path, exif_orientation=False) for i in image_ids}
    feats = dict(zip(image_ids, matcher.encode([matcher.prepare(rgb[i]) for i in image_ids]), strict=True))
    groups: dict[int, list[Reference]] = {}
    for o in coco.objects:
        ref = Reference(
            o.id, o.image_id, o.category_id, feats[o.image_id], o.keypoints[:, :2], o.keypoints[:, 2] == 2
        )
        groups.setdefault(o.category_id, []).append(ref)
    for cid, refs in groups.items():
        if not any(ref.usable.any() for ref in refs):
            raise SimpleMatchError(
                f"no reference of category '{coco.categories[cid].name}' has a visible (v = 2) keypoint",
                "mark the keypoints the reference images show as visible (v = 2)",
            )
    return groups, rgb


@dataclass(frozen=True, eq=False)
class Transferred:
    """One target's keypoints of one category: ``kps`` (K, 2) target pixels, ``confidence`` (K,),
    ``matched`` (K,) some reference has the keypoint, ``kept`` (K,) matched and not below the minimum
    confidence; ``primary``: the reference whose matches were the most confident (the review shows it)."""

    kps: np.ndarray
    confidence: np.ndarray
    matched: np.ndarray
    kept: np.ndarray
    primary: int


def transfer_keypoints(
    matcher: Matcher,
    refs: Sequence[Reference],
    target: Features,
    *,
    combine: str = DEFAULT_TRANSFER_COMBINE,
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
) -> Transferred:
    """Match every reference's visible keypoints into one encoded target and combine them."""
    n_kps = len(refs[0].kps)
    pred = np.full((len(refs), n_kps, 2), np.nan)
    conf = np.zeros((len(refs), n_kps))
    for r, ref in enumerate(refs):
        idx = np.flatnonzero(ref.usable)
        if len(idx):
            # check_keypoints=False: the COCO reader has checked them (visible points inside their image)
            m = matcher.match(
                ref.features, target, ref.kps[idx], confidence=confidence, check_keypoints=False
            )
            pred[r, idx], conf[r, idx] = m.target_kps_all, m.confidence
    valid = np.isfinite(pred).all(axis=-1)
    h, w = target.hw
    pos, out = combine_matches(pred, conf, valid, VOTE_ALPHA * max(h, w), combine)
    matched = valid.any(axis=0)
    # Clamp into the image (COCO pixels run 0 .. w - 1), so the file reads back as references.
    pos = np.where(matched[:, None], np.clip(pos, 0.0, [w - 1.0, h - 1.0]), 0.0)
    kept = matched & (out >= min_confidence if min_confidence is not None else True)
    return Transferred(pos, out, matched, kept, int(np.argmax(conf.sum(axis=1))))


def list_targets(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by relative path; hidden files and folders
    (names starting with '.', such as the temporary files of a running transfer) are skipped."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in rel.parts):
            if path.is_file():
                found.append((rel.as_posix(), path))
    return [path for _, path in sorted(found)]


_Decoded = tuple[str, Path, "np.ndarray | None", "Prepared | SimpleMatchError"]


def _decoded_batches(matcher: Matcher, todo: list[tuple[str, Path]], batch: int) -> Iterator[list[_Decoded]]:
    """Batches of (file name, path, RGB, model input) -- or the error instead of the input -- in order, the
    next batch decoded by a few threads while the caller encodes and matches this one (Pillow decodes and
    numpy resizes outside the GIL; this keeps a GPU fed. On a busy 2-core CPU it measured no gain)."""

    def load(item: tuple[str, Path]) -> _Decoded:
        name, path = item
        try:
            rgb = load_image(path, exif_orientation=False)
            return name, path, rgb, matcher.prepare(rgb)
        except SimpleMatchError as err:
            return name, path, None, err

    chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        ahead = [pool.submit(load, item) for item in chunks[0]] if chunks else []
        for i in range(len(chunks)):
            current = [f.result() for f in ahead]
            ahead = [pool.submit(load, item) for item in chunks[i + 1]] if i + 1 < len(chunks) else []
            yield current


class _Stop:
    """SIGINT / SIGTERM set a flag; the loop finishes the current target, then writes the file's end. A
    second Ctrl-C raises KeyboardInterrupt at once (the default handler is back)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Everything one run reads and decides before it writes anything."""

    out: Path
    review: Path | None
    coco: CocoKeypoints
    todo: list[tuple[str, Path]]  # (file name relative to the target folder, path), not done yet
    ids: dict[str, int]  # file name -> image id (rank in the sorted target list, from 1)
    excluded: int  # reference images found in the target folder (not transferred to themselves)
    info: dict[str, Any]
    categories: list[dict[str, Any]]
    previous: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    entries: list[dict[str, Any]] = field(default_factory=list)  # review cards


def _plan(refs, targets, out, model, images, review_dir, combine, confidence, min_confidence, batch_size,
          resume, force) -> _Plan:  # fmt: skip
    check_confidence(confidence, min_confidence)
    validate.choice(combine, "--combine", TRANSFER_COMBINES)
    validate.number(batch_size, "--batch-size", low=1, integer=True)
    if resume and force:
        raise SimpleMatchError(
            "--resume and --force contradict each other", "--resume continues the file, --force replaces it"
        )
    model_path = Path(model) if model is not None else find_default_model()
    if not model_path.is_file():
        raise SimpleMatchError(
            f"model not found: {model_path}", "pass --model PATH/model.onnx (smatch export)"
        )
    targets = Path(targets)
    if not targets.is_dir():
        raise SimpleMatchError(
            f"--targets {targets} is not a folder", "pass the folder of the images to annotate"
        )
    inputs = [Path(refs), model_path, targets, images]
    out_path = validate.output_file(out, "--out", suffixes=(".json",), inputs=inputs, force=force or resume)
    assert out_path is not None
    if resume and not out_path.is_file():
        raise SimpleMatchError(f"--resume: {out_path} does not exist", "drop --resume to start a new file")
    review_path = None
    if review_dir is not None:
        review_path = validate.output_dir(
            review_dir, "--review", inputs=[*inputs, out_path], force=force or resume, scanned=[targets]
        )
    coco = read_coco_keypoints(refs, images)
    if not coco.objects:
        raise SimpleMatchError(
            f"{refs} holds no annotation with a labelled keypoint", "annotate the reference images"
        )
    ref_files = {coco.images[o.image_id].path.resolve() for o in coco.objects}
    found = [(p.relative_to(targets).as_posix(), p) for p in list_targets(targets)]
    todo = [(name, p) for name, p in found if p.resolve() not in ref_files]
    if not todo:
        raise SimpleMatchError(
            f"no target image under {targets}", f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) there"
        )
    used = list(dict.fromkeys(o.category_id for o in coco.objects))
    settings = {
        "version": simplematch.__version__, "refs": str(refs), "refs_sha256": sha256_file(refs),
        "references": len(coco.objects), "targets": str(targets), "model": str(model_path),
        "model_sha256": sha256_file(model_path), "confidence": confidence, "min_confidence": min_confidence,
        "combine": combine, "vote_alpha": VOTE_ALPHA,
    }  # fmt: skip
    info = {"description": "keypoints transferred from reference images by smatch transfer (simplematch)",
            "simplematch": settings}  # fmt: skip
    categories = coco_results.output_categories(
        read_json_file(Path(refs), "pass a COCO keypoints JSON"), used
    )
    plan = _Plan(out_path, review_path, coco, todo, {n: k + 1 for k, (n, _) in enumerate(todo)},
                 len(found) - len(todo), info, categories)  # fmt: skip
    if resume:
        _continue(plan, settings)
    return plan


def _continue(plan: _Plan, settings: dict[str, Any]) -> None:
    """Load the partial file into ``plan`` and drop its targets from the work list."""
    anns, imgs = coco_results.read_partial(plan.out, settings)
    for im in imgs:
        if plan.ids.get(im.get("file_name")) != im.get("id"):
            raise SimpleMatchError(
                f"--resume: {plan.out} has {im.get('file_name')} as image {im.get('id')}, but the target"
                " folder has changed since (files added, removed or renamed)",
                "rerun without --resume and with --force to start the file again",
            )
    done = {im["file_name"] for im in imgs}
    plan.todo = [(n, p) for n, p in plan.todo if n not in done]
    plan.previous = (anns, imgs)
    names = {im["id"]: im["file_name"] for im in imgs}
    for ann in anns:
        plan.entries.append(_entry(plan, names[ann["image_id"]], ann))


def _entry(plan: _Plan, file_name: str, ann: dict[str, Any]) -> dict[str, Any]:
    """The review card of one result annotation."""
    return {
        "file_name": file_name,
        "category": plan.coco.categories[ann["category_id"]].name,
        "score": ann["score"],
        "kept": ann["num_keypoints"],
        "total": len(ann["keypoints"]) // 3,
        "picture": review.picture_name(ann["image_id"], ann["category_id"]),
    }


def run_transfer(
    refs: str | Path,
    targets: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    *,
    images: str | Path | None = None,
    review_dir: str | Path | None = None,
    combine: str = DEFAULT_TRANSFER_COMBINE,
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    allow_fallback: bool = False,
    resume: bool = False,
    force: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    on_failure: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Transfer the keypoints of ``refs`` (COCO keypoints JSON; its images under ``images`` or beside it)
    to every image under ``targets``; write the COCO file ``out`` and, with ``review_dir``, the review page.

    Everything is read and validated before anything is written. Returns the summary ``{"targets", "done",
    "written", "failed", "failures": [{"file", "error"}], "excluded", "interrupted", "seconds",
    "images_per_s", "out", "review", "model", "provider"}``; ``progress(done, total)`` after each target,
    ``on_failure({"file", "error"})`` for each unreadable one.
    """
    plan = _plan(refs, targets, out, model, images, review_dir, combine, confidence, min_confidence,
                 batch_size, resume, force)  # fmt: skip
    settings = plan.info["simplematch"]
    matcher = Matcher(settings["model"], device=device, allow_fallback=allow_fallback, batch_size=batch_size)
    groups, ref_rgb = load_references(matcher, plan.coco)
    options = dict(combine=combine, confidence=confidence, min_confidence=min_confidence)
    stop = _Stop()
    pictures: list[Path] = []
    made_review = plan.review is not None and not plan.review.exists()
    try:
        with signals.handled_by(stop):
            summary = _write(plan, matcher, groups, ref_rgb, options, stop, pictures, progress, on_failure)
    except BaseException:  # a failed run leaves nothing behind: this run's pictures go too
        for p in pictures:
            p.unlink(missing_ok=True)
        if made_review and plan.review is not None:
            for folder in (plan.review / review.PICTURES, plan.review):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
    if plan.review is not None:
        notes = [
            f"{len(plan.entries)} results, worst (lowest score) first. Colour = confidence (red 0, yellow"
            " 0.5, green 1); x = rejected (below --min-confidence, v = 0 in the file). Left: the reference"
            " that matched with the highest confidence; right: the target.",
            f"references {settings['refs']}, model {settings['model']}, combine {combine}, confidence"
            f" {confidence}, min-confidence {min_confidence}",
        ]
        review.write_index(plan.review, plan.entries, f"smatch transfer: {settings['targets']}", notes)
    return {**summary, "excluded": plan.excluded, "out": str(plan.out), "model": settings["model"],
            "review": None if plan.review is None else str(plan.review / "index.html"),
            "provider": matcher.provider}  # fmt: skip


def _write(plan, matcher, groups, ref_rgb, options, stop, pictures, progress, on_failure) -> dict[str, Any]:
    """Stream the results of every target still to do into ``plan.out`` (see :func:`run_transfer`)."""
    anns, images = plan.previous
    images = list(images)
    failures: list[dict[str, Any]] = []
    written = 0
    t0 = time.perf_counter()
    with atomic_path(plan.out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        writer = coco_results.ResultsWriter(fh, plan.info, plan.categories)
        for ann in anns:
            writer.add(ann)
        for batch in _decoded_batches(matcher, plan.todo, matcher.batch_size):
            good = [item for item in batch if not isinstance(item[3], SimpleMatchError)]
            for name, _path, _rgb, err in batch:
                if isinstance(err, SimpleMatchError):
                    failures.append({"file": name, "error": err.problem})
                    if on_failure is not None:
                        on_failure(failures[-1])
            feats = matcher.encode([item[3] for item in good]) if good else []
            for (name, _path, rgb, _prep), feat in zip(good, feats, strict=True):
                image_id = plan.ids[name]
                for rank, (cid, refs) in enumerate(groups.items()):
                    res = transfer_keypoints(matcher, refs, feat, **options)
                    ann = coco_results.annotation((image_id - 1) * len(groups) + rank + 1, image_id, cid,
                                                  res.kps, res.confidence, res.matched, res.kept)  # fmt: skip
                    writer.add(ann)
                    if plan.review is not None:
                        pictures.append(
                            _review_picture(plan.review, ann, refs[res.primary], ref_rgb, rgb, res)
                        )
                    plan.entries.append(_entry(plan, name, ann))
                images.append({"id": image_id, "file_name": name, "width": feat.hw[1], "height": feat.hw[0]})
                written += 1
                if progress is not None:
                    progress(written + len(failures), len(plan.todo))
                if stop.signum is not None:
                    break
            if stop.signum is not None:
                break
        writer.close(images)
    seconds = time.perf_counter() - t0
    return {"targets": len(plan.ids), "done": len(images), "written": written, "failed": len(failures),
            "failures": failures, "interrupted": stop.signum is not None, "seconds": seconds,
            "images_per_s": (written + len(failures)) / seconds if seconds > 0 else None}  # fmt: skip


def _review_picture(folder, ann, ref: Reference, ref_rgb, rgb, res: Transferred) -> Path:
    """The review picture of one result: the primary reference's matched points -> their final position."""
    show = ref.usable & res.matched
    return review.write_picture(
        folder, review.picture_name(ann["image_id"], ann["category_id"]), ref_rgb[ref.image_id],
        ref.kps[show], rgb, res.kps[show], res.confidence[show], ~res.kept[show],
    )  # fmt: skip
