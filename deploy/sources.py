"""Frame sources for the field runtime: an image folder, a video file, a camera index, or an RTSP /
GStreamer pipeline string (OpenCV VideoCapture). numpy + OpenCV only.

Behaviour the runtime documents and the tests hold it to:
  - a corrupt or empty frame is counted (`bad_frames`) and skipped, never passed on;
  - a folder or a video file ends at its end (a truncated file ends where its data ends); in an MJPG file
    the frame the file was cut in (no JPEG end marker) is a bad frame, not half new and half the last one;
  - a live source (camera, RTSP, pipeline) that drops is reopened with exponential backoff
    (0.5 s doubling to 8 s) and given up after `max_reopen` failed attempts in a row;
  - a `StopFlag` set by a signal handler ends the backoff at once and the source with it, and a stream's open
    or read within about a second (opens run in a thread; reads time out after READ_TIMEOUT_MS).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deploy.errors import EdgeVisionError
from deploy.preprocess import ImageReadError, read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# a stream's open and each read (FFmpeg backend): a stalled read ends in time for the stop flag to be seen
OPEN_TIMEOUT_MS, READ_TIMEOUT_MS = 10_000, 1_000


class SourceError(EdgeVisionError, RuntimeError):
    """A source that cannot be opened or that stayed down past the reopen budget."""


class StopFlag:
    """Set by a signal handler; `sleep` wakes within 50 ms of it. A plain attribute, no lock: a handler may run
    while its own thread holds one, so threading.Event.set() from a handler can deadlock."""

    def __init__(self):
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = reason

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the flag was set (now or during the sleep)."""
        end = time.monotonic() + seconds
        while self.reason is None and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        return self.reason is not None


@dataclass
class Frame:
    id: int
    name: str
    timestamp: float  # seconds since the epoch when the frame was read
    image: np.ndarray  # (H, W, 3) uint8 BGR


@dataclass
class SourceStats:
    frames: int = 0
    bad_frames: int = 0
    reopens: int = 0


def is_live(spec: str) -> bool:
    return spec.isdigit() or "://" in spec or "!" in spec  # camera index, rtsp://..., GStreamer pipeline


def open_source(spec: str, max_reopen: int = 10, backoff: tuple[float, float] = (0.5, 8.0),
                stop: StopFlag | None = None):
    """-> an iterator of Frames with a `.stats` attribute, chosen by what `spec` names."""
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if is_live(spec):
        return VideoSource(spec, live=True, max_reopen=max_reopen, backoff=backoff, stop=stop)
    if path.is_file():
        return VideoSource(spec, live=False)
    raise SourceError(f"{spec}: not a folder, video file, camera index or rtsp:// / GStreamer source")


class FolderSource:
    def __init__(self, folder: Path):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Frame]:
        for i, f in enumerate(self.files):
            try:
                img = read_image(f)
            except ImageReadError as e:
                self.stats.bad_frames += 1
                print(f"skip: {e}", file=sys.stderr, flush=True)
                continue
            self.stats.frames += 1
            yield Frame(i, f.name, time.time(), img)


@contextmanager
def native_stderr_to_file():
    """Send what native code writes to this process's stderr (C stdio: OpenCV's container readers print
    "Unexpected element ... Got: <binary>" for a file cut inside its header) to a discarded file, so the user
    sees our one-line error and not the library's bytes. Only around a file's open: fd 2 is process-wide."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def jpeg_end_marker(packet: np.ndarray) -> bool:
    """A whole JPEG ends in EOI (FF D9), before any zero padding; FF D9 cannot occur inside the coded data."""
    return packet.size >= 4 and bytes(np.trim_zeros(packet.ravel(), "b")[-2:]) == b"\xff\xd9"


class VideoSource:
    def __init__(self, spec: str, live: bool, max_reopen: int = 10, backoff: tuple[float, float] = (0.5, 8.0),
                 stop: StopFlag | None = None):
        self.spec, self.live, self.max_reopen, self.backoff = spec, live, max_reopen, backoff
        self.stop = stop or StopFlag()
        self.stats = SourceStats()
        self.raw_jpeg = False  # MJPG file read as JPEG packets: a cut frame is seen by its missing end marker
        self.cap = self._open()
        if self.cap is None:
            if not live:
                raise SourceError(f"{spec}: OpenCV cannot open this video (corrupt, or a codec it lacks)")
            self.cap = self._reopen()

    def _open(self):
        """An opened capture, or None. A live source opens in a thread the stop flag can walk away from:
        OpenCV's open blocks (FFmpeg waits up to OPEN_TIMEOUT_MS for a server that accepts the connection and
        never answers), and a signal handler only runs once it returns, past a container's stop grace period."""
        if not self.live:
            return self._open_capture()
        done, box = threading.Event(), {}

        def target() -> None:
            try:
                box["cap"] = self._open_capture()
            finally:
                done.set()

        threading.Thread(target=target, name="source-open", daemon=True).start()
        while not done.wait(0.05):
            if self.stop.reason is not None:
                return None  # the open ends in its thread at its timeout; the run ends now
        return box.get("cap")

    def _open_capture(self):
        if self.live:
            return self._open_now()
        with native_stderr_to_file():  # OpenCV's AVI reader prints raw header bytes on a cut file
            return self._open_now()

    def _open_now(self):
        src = int(self.spec) if self.spec.isdigit() else self.spec
        api = cv2.CAP_GSTREAMER if "!" in self.spec else cv2.CAP_ANY
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS] \
            if "://" in self.spec else []  # a stream: bounded waits (a read that times out counts as a miss)
        cap = cv2.VideoCapture(src, api, params)
        if not cap.isOpened():
            return None
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
        if not self.live and fourcc.upper() == b"MJPG":
            self.raw_jpeg = bool(cap.set(cv2.CAP_PROP_FORMAT, -1))  # FFmpeg backend: packets, not pixels
        return cap

    def _reopen(self):
        """A reopened capture, or None when the stop flag ended the backoff."""
        delay = self.backoff[0]
        for attempt in range(1, self.max_reopen + 1):
            if self.stop.sleep(delay):
                return None
            cap = self._open()
            if cap is not None:
                self.stats.reopens += 1
                return cap
            print(f"warning: {self.spec}: reopen attempt {attempt}/{self.max_reopen} failed, next in "
                  f"{min(delay * 2, self.backoff[1]):.1f} s", file=sys.stderr, flush=True)
            delay = min(delay * 2, self.backoff[1])
        raise SourceError(f"{self.spec}: source down after {self.max_reopen} reopen attempts; check the camera/stream")

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        misses = 0
        while self.cap is not None and self.stop.reason is None:
            ok, img = self.cap.read()
            if not ok:
                if not self.live:
                    return  # end of file, or where a truncated file's data ends
                misses += 1
                if misses >= 3:  # a live source that stopped delivering: reopen it
                    self.cap.release()
                    self.cap = self._reopen()
                    misses = 0
                continue
            misses = 0
            if self.raw_jpeg:
                if not jpeg_end_marker(img):
                    self.stats.bad_frames += 1
                    print(f"skip: {self.spec}: frame {i} is cut short (no JPEG end marker)", file=sys.stderr,
                          flush=True)
                    continue
                img = cv2.imdecode(img.reshape(-1), cv2.IMREAD_COLOR)
            if img is None or img.size == 0 or img.ndim != 3 or img.shape[2] != 3:
                self.stats.bad_frames += 1
                print(f"skip: {self.spec}: frame {i} is empty or not HxWx3", file=sys.stderr, flush=True)
                continue
            self.stats.frames += 1
            yield Frame(i, f"{i:08d}", time.time(), img)
            i += 1

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
