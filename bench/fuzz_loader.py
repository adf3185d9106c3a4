"""Fuzz the film loader: mutated DICOM / PNG / JPEG / TIFF / BMP files must only ever give a Film or a FilmError.

Seeds: the sample films in ``resources/samples/``, small DICOM objects built with ``tests/dicom_factory.py``
(uncompressed 8/16/32/1-bit, signed, MONOCHROME1, RGB, palette colour, multi-frame, Modality and VOI LUT
sequences, RLE, JPEG-LS, JPEG 2000, JPEG baseline, the last four also at 320×288, big endian, deflated, no
file meta, no pixel data, a CT volume) and small PNG / JPEG / TIFF / BMP images made with Pillow (grey, 16-bit, colour, palette, alpha, EXIF
rotation, multi-page, LZW / deflate / PackBits TIFF). Each case applies one to three mutations to one seed:

* byte level: bit flips, interesting bytes, interesting integers (0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, item
  tags...) written over the seed's length / size fields (DICOM element lengths, PNG chunks and IHDR, JPEG
  SOF, TIFF IFD entries, BMP header), arithmetic on those fields, truncation, chunk deletion / duplication,
  insertion, splicing two seeds; PNG chunk CRCs are recomputed most of the time so the damage reaches
  the decoder instead of stopping at the checksum;
* DICOM structure, through pydicom: absurd Rows/Columns (0, 65535×65535, just under and over the pixel
  limit), Bits Allocated / Stored 0/7/64..., Samples per Pixel 0/5, Number of Frames huge or not a number,
  wrong / unknown / deflated transfer syntax, pixel data shorter than declared or re-encapsulated, lying
  LUT descriptors, NaN/inf rescale and windows, broken character sets, element lengths of 0x7FFFFFFF,
  sequences nested thousands deep, missing required elements;
* PNG structure: IHDR size / depth / colour type, dropped or repeated chunks, compressed-text bombs,
  EXIF orientation;
* bombs: real 60-megapixel images (the most the default pixel limit lets through) in small files, as PNG
  (grey 8/16-bit, RGBA) and as DICOM RLE frames of every sample layout (1-3 samples of 8-64 bits), and a
  deflated DICOM dataset of 5 MB that inflates to 1 GiB.

Every case is written to a temporary file and opened in a forked worker that runs a batch of cases. A case
is a failure when load_film raises anything but FilmError; when it makes the worker's resident memory grow
by more than ``--mem-mb`` (1.5 GB; high-water mark reset before each case, and a watchdog kills a worker
past twice that); when a MemoryError happens anywhere under it (even one wrapped into a FilmError) under the
worker's address-space cap (``RLIMIT_AS``, ``--as-mb`` = 6 GB above its start: a safety net, not the
measure, because CPython and Pillow reserve without touching a buffer as large as a lying length field
says, up to 4 GB); when it runs longer than ``--timeout`` seconds (10; confirmed by a second run alone);
when the worker dies (signal); or when the input file changed (SHA-256 before and after).

    python bench/fuzz_loader.py                       # 10,000 cases, seed 1
    python bench/fuzz_loader.py --quick               # 500 cases
    python bench/fuzz_loader.py --seed 7 --case 1234  # re-run one case and show its traceback
    python bench/fuzz_loader.py --seed 7 --case 1234 --save-case /tmp/x   # keep the mutated file

Cases are deterministic: case ``i`` of seed ``S`` is the same file on every machine with the same library
versions. Exit status 1 when there was any failure. The harness (``run_fuzz``, ``print_report``) is shared
with ``bench/fuzz_checkpoint.py`` and ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import random
import re
import resource
import select
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
for _p in (str(REPO), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEM_MB = 1536  # memory one case may touch (resident set growth) before it counts as a blow-up
DEFAULT_AS_MB = 6144  # address space one worker may reserve on top of what it started with (safety net)


# ==================================================================================================
# Harness (target-independent)
# ==================================================================================================


@dataclass
class Case:
    """One fuzz input: the bytes, the file suffix to give it, and how it was made."""

    seed: str
    mutation: str
    data: bytes
    suffix: str = ""


@dataclass
class Result:
    index: int
    seed: str = "?"
    mutation: str = ""
    outcome: str = ""
    failure: bool = False
    detail: str = ""
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # the worker's resident high-water mark during the case
    added_mb: float = 0.0  # how far that is above the resident set the case started from


@dataclass
class Report:
    target: str
    seed: int
    results: list
    wall_s: float
    slow: list = field(default_factory=list)  # (index, first_seconds, note): timed out once, not alone

    @property
    def failures(self) -> list:
        return [r for r in self.results if r.failure]


def case_rng(seed: int, index: int) -> random.Random:
    """Case ``index`` of run ``seed`` (a string seed is hashed with SHA-512: stable across runs and machines)."""
    return random.Random(f"cxrviewer-fuzz/{seed}/{index}")


def _vm_kb(field_name: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def exception_chain(exc):
    """The exception and every exception it was raised from or during (``raise X from None`` keeps
    ``__context__``), so a MemoryError wrapped into the documented error is still seen."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def describe_exception(exc: BaseException, limit: int = 4) -> str:
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg[:200]}" + (f"  [at {where}]" if where else "")


def memory_error_in(exc) -> Optional[BaseException]:
    for e in exception_chain(exc):
        if isinstance(e, MemoryError):
            return e
    return None


def run_one(target, seed: int, index: int, workdir: Path, mem_mb: int = DEFAULT_MEM_MB) -> Result:
    """Generate case ``index`` and run it in this process (workers call this).

    Memory: the resident-set high-water mark is reset before the case (``/proc/self/clear_refs``) and read
    after it; a case whose peak is more than ``mem_mb`` above the resident set it started from is a
    failure even if it succeeded."""
    res = Result(index)
    try:
        case = target.make_case(index, case_rng(seed, index))
    except Exception as exc:  # noqa: BLE001 - a fuzzer bug, reported as a failure so it is seen
        res.outcome, res.failure, res.detail = "fuzzer-error", True, "making the case: " + describe_exception(exc)
        return res
    res.seed, res.mutation = case.seed, case.mutation
    path = workdir / f"case{index}{case.suffix}"
    path.write_bytes(case.data)
    digest = hashlib.sha256(case.data).digest()
    rss_before = _vm_kb("VmRSS") / 1024
    measured = _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        outcome, failure, detail = target.execute(path, case, workdir)
    except BaseException as exc:  # noqa: BLE001 - execute() should classify; anything leaking is a crash
        outcome, failure, detail = "crash", True, "escaped the target wrapper: " + describe_exception(exc)
    res.seconds = time.perf_counter() - t0
    if measured:
        res.peak_rss_mb = _vm_kb("VmHWM") / 1024
        res.added_mb = max(0.0, res.peak_rss_mb - rss_before)
    res.outcome, res.failure, res.detail = outcome, failure, detail
    if measured and mem_mb > 0 and res.added_mb > mem_mb:
        res.outcome, res.failure = "memory", True
        res.detail = (f"resident memory grew by {res.added_mb:.0f} MB (limit {mem_mb} MB); "
                      f"result: {outcome}: {detail}")
    try:
        after = hashlib.sha256(path.read_bytes()).digest() if path.is_file() else None
    except OSError:
        after = None
    if after != digest:
        res.outcome, res.failure = "modified", True
        res.detail = ("the input file was " + ("deleted or replaced" if after is None else "changed") + "; " + detail)
    extra = target.check_after(case, workdir)
    if extra:
        res.outcome, res.failure, res.detail = extra[0], True, extra[1] + ("; " + res.detail if res.detail else "")
    try:
        path.unlink()
    except OSError:
        pass
    return res


def _send(fd: int, obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _child(target, seed: int, indices: list, workdir: Path, wfd: int, mem_mb: int, as_mb: int, log_path: Path) -> None:
    """Forked worker: cap the address space, then run the batch, reporting start/done of each case."""
    code = 0
    try:
        try:
            fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        if as_mb > 0:
            cap = _vm_kb("VmSize") * 1024 + as_mb * 1024 * 1024
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                cap = min(cap, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        target.child_setup(workdir)
        for i in indices:
            _send(wfd, {"ev": "start", "i": i})
            res = run_one(target, seed, i, workdir, mem_mb)
            _send(wfd, {"ev": "done", **asdict(res)})
    except BaseException:  # noqa: BLE001
        try:
            _send(wfd, {"ev": "harness", "detail": traceback.format_exc()[-2000:]})
        except BaseException:  # noqa: BLE001
            pass
        code = 3
    finally:
        os._exit(code)


class _Worker:
    def __init__(self, pid: int, fd: int, batch: list):
        self.pid, self.fd, self.batch = pid, fd, batch
        self.buf = b""
        self.current: Optional[int] = None
        self.started = time.monotonic()
        self.done: set = set()
        self.harness = ""


def _spawn(target, seed, batch, workdir, mem_mb, as_mb, log_path) -> _Worker:
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        _child(target, seed, batch, workdir, wfd, mem_mb, as_mb, log_path)
    os.close(wfd)
    return _Worker(pid, rfd, batch)


def _signal_name(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_fuzz(target, *, seed: int, indices, jobs: int = 2, timeout: float = DEFAULT_TIMEOUT_S,
             mem_mb: int = DEFAULT_MEM_MB, as_mb: int = DEFAULT_AS_MB, batch: int = 200,
             workdir: Optional[Path] = None, progress: Optional[Callable[[int, int, float], None]] = None,
             confirm_hangs: bool = True) -> Report:
    """Run the cases ``indices`` in forked workers (``jobs`` at a time, ``batch`` cases per worker).

    Limits: ``timeout`` seconds per case; ``mem_mb`` of resident memory a case may add (checked after the
    case from the high-water mark, and while it runs by this process, which kills a worker past twice that);
    ``as_mb`` of address space a worker may reserve on top of its start (RLIMIT_AS, a safety net: CPython
    and Pillow reserve, without touching, a buffer as large as a length field claims)."""
    indices = list(indices)
    batch = max(1, min(batch, -(-len(indices) // max(1, jobs))))  # a short run still uses every worker
    kill_rss = _vm_kb("VmRSS") / 1024 + 2 * mem_mb if mem_mb > 0 else float("inf")
    t_start = time.monotonic()
    own_tmp = None
    if workdir is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        own_tmp = tempfile.TemporaryDirectory(prefix="cxr-fuzz-", dir=base)
        workdir = Path(own_tmp.name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "workers.log"
    results: dict = {}
    timed_out: list = []
    pending = deque(indices[k:k + batch] for k in range(0, len(indices), batch))
    active: dict = {}
    last_progress = time.monotonic()

    def finish(w: _Worker, status: int, why: Optional[str]) -> None:
        os.close(w.fd)
        del active[w.pid]
        if w.current is not None and w.current not in results:
            if why == "timeout":
                timed_out.append(w.current)
            elif why and why.startswith("memory"):
                results[w.current] = Result(w.current, outcome="memory", failure=True, detail=why)
            else:
                results[w.current] = Result(w.current, outcome="crash", failure=True,
                                            detail=f"worker {_signal_name(status)} during the case"
                                            + (f"; {w.harness}" if w.harness else ""))
        rest = [i for i in w.batch if i not in results and i not in w.done and i != w.current]
        if w.harness and w.current is None:
            for i in rest:  # the worker itself broke before any case: do not loop forever on it
                results[i] = Result(i, outcome="fuzzer-error", failure=True, detail=w.harness[-400:])
            rest = []
        if rest:
            pending.appendleft(rest)

    try:
        while pending or active:
            while pending and len(active) < max(1, jobs):
                w = _spawn(target, seed, pending.popleft(), workdir, mem_mb, as_mb, log_path)
                active[w.pid] = w
            now = time.monotonic()
            wait = min((w.started + timeout - now) if w.current is not None else timeout for w in active.values())
            ready, _, _ = select.select([w.fd for w in active.values()], [], [], max(0.02, min(wait, 0.2)))
            by_fd = {w.fd: w for w in active.values()}
            for fd in ready:
                w = by_fd[fd]
                chunk = os.read(fd, 65536)
                if not chunk:
                    _, status = os.waitpid(w.pid, 0)
                    finish(w, status, None)
                    continue
                w.buf += chunk
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if msg["ev"] == "start":
                        w.current, w.started = msg["i"], time.monotonic()
                    elif msg["ev"] == "done":
                        msg.pop("ev")
                        r = Result(**msg)
                        results[r.index] = r
                        w.done.add(r.index)
                        w.current = None
                    elif msg["ev"] == "harness":
                        w.harness = msg["detail"]
            now = time.monotonic()
            for w in list(active.values()):
                if w.current is not None and now - w.started > timeout:
                    os.kill(w.pid, signal.SIGKILL)
                    _, status = os.waitpid(w.pid, 0)
                    finish(w, status, "timeout")
                elif w.current is not None and (rss := _rss_mb(w.pid)) > kill_rss:
                    os.kill(w.pid, signal.SIGKILL)
                    _, status = os.waitpid(w.pid, 0)
                    finish(w, status, f"memory: the worker reached {rss:.0f} MB resident during the case; killed")
            if progress and now - last_progress > 5:
                last_progress = now
                progress(len(results), len(indices), now - t_start)
        slow = []
        for i in timed_out:  # confirm alone: a 2-core machine shared with training can stall a case
            if not confirm_hangs:
                results[i] = Result(i, outcome="hang", failure=True, detail=f"over {timeout:g} s")
                continue
            again = run_fuzz(target, seed=seed, indices=[i], jobs=1, timeout=timeout, mem_mb=mem_mb, as_mb=as_mb,
                             batch=1, workdir=workdir, confirm_hangs=False)
            r = again.results[0]
            if r.outcome == "hang":
                r.detail = f"over {timeout:g} s twice (in the batch and alone)"
            else:
                slow.append((i, timeout, f"timed out in the batch, {r.seconds:.1f} s alone: {r.outcome}"))
            results[i] = r
    finally:
        for w in list(active.values()):
            try:
                os.kill(w.pid, signal.SIGKILL)
                os.waitpid(w.pid, 0)
            except OSError:
                pass
        if own_tmp is not None:
            own_tmp.cleanup()
    ordered = [results[i] for i in indices]
    for r in ordered:  # the seed and mutation of a case whose worker died are re-derived here
        if r.seed == "?":
            try:
                c = target.make_case(r.index, case_rng(seed, r.index))
                r.seed, r.mutation = c.seed, c.mutation
            except Exception:  # noqa: BLE001
                pass
    return Report(target.name, seed, ordered, time.monotonic() - t_start, slow)


def _norm_reason(detail: str) -> str:
    s = re.sub(r"\d+(\.\d+)?", "N", detail)
    s = re.sub(r"'[^']*'", "'…'", s)
    return s[:90]


def print_report(report: Report, target, script: str, out=None, top_reasons: int = 12) -> None:
    out = out or sys.stdout
    rs = report.results
    order = list(target.outcomes) + sorted({r.outcome for r in rs} - set(target.outcomes))
    counts = Counter(r.outcome for r in rs)
    n = len(rs)
    print(f"\n{target.name}: {n} cases, seed {report.seed}, {report.wall_s:.0f} s wall "
          f"({n / max(report.wall_s, 1e-9):.0f} cases/s)", file=out)
    print("outcomes: " + ", ".join(f"{o} {counts[o]}" for o in order if counts[o] or o in target.outcomes), file=out)
    per_seed = defaultdict(Counter)
    for r in rs:
        per_seed[r.seed][r.outcome] += 1
    cols = [o for o in order if counts[o]]
    w = max([len(s) for s in per_seed] + [4])
    print(f"\n{'seed':<{w}}  " + "  ".join(f"{c:>{max(len(c), 5)}}" for c in cols) + "  total", file=out)
    for s in sorted(per_seed):
        c = per_seed[s]
        print(f"{s:<{w}}  " + "  ".join(f"{c[o]:>{max(len(o), 5)}}" for o in cols) + f"  {sum(c.values()):>5}", file=out)
    expected = [r for r in rs if not r.failure and r.outcome in target.error_outcomes]
    if expected and top_reasons:
        reasons = Counter(_norm_reason(r.detail) for r in expected)
        print(f"\nmost frequent refusals ({len(reasons)} distinct):", file=out)
        for text, k in reasons.most_common(top_reasons):
            print(f"  {k:>6}  {text}", file=out)
    slowest = sorted(rs, key=lambda r: r.seconds, reverse=True)[:3]
    peak = max(rs, key=lambda r: r.added_mb) if rs else None
    if slowest:
        print("\nslowest cases: " + "; ".join(f"#{r.index} {r.seconds:.2f} s ({r.seed}, {r.outcome})" for r in slowest),
              file=out)
    if peak is not None and peak.peak_rss_mb:
        print(f"most memory added by one case: {peak.added_mb:.0f} MB resident (#{peak.index}, {peak.seed}; worker peak "
              f"{peak.peak_rss_mb:.0f} MB)", file=out)
    for i, _t, note in report.slow:
        print(f"note: case #{i} {note}", file=out)
    fails = report.failures
    print(f"\nFAILURES: {len(fails)}", file=out)
    for r in fails:
        print(f"  #{r.index} [{r.outcome}] seed file {r.seed}, mutation: {r.mutation}", file=out)
        print(f"      {r.detail}", file=out)
        print(f"      reproduce: python {script} --seed {report.seed} --case {r.index}", file=out)


def format_failures(report: Report) -> str:
    return "\n".join(f"#{r.index} [{r.outcome}] {r.seed}: {r.mutation}: {r.detail}" for r in report.failures)


# ==================================================================================================
# Byte-level mutations (shared with the checkpoint fuzzer)
# ==================================================================================================

INTERESTING = {
    1: (0x00, 0x01, 0x02, 0x03, 0x07, 0x08, 0x10, 0x20, 0x7F, 0x80, 0xFE, 0xFF),
    2: (0x0000, 0x0001, 0x0002, 0x0003, 0x0008, 0x0010, 0x0040, 0x00FF, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 7745, 7746),
    4: (0, 1, 2, 0x10, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
        7745, 0xE000FFFE, 0xE00DFFFE, 0xE0DDFFFE, 0x00107FE0),
    8: (0, 1, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0x80, 0xFFFFFFFF),
}


@dataclass
class Field:
    """A place in a seed where a number lives (a length, a size, an offset): the best place to lie."""

    offset: int
    width: int  # bytes: 1, 2, 4 or 8
    order: str = "little"
    name: str = ""


@dataclass
class MutationContext:
    fields: list = field(default_factory=list)
    extra_values: tuple = ()
    others: list = field(default_factory=list)  # other seeds' bytes, for splicing
    head: int = 2048  # positions are biased to the first ``head`` bytes (headers live there)


def _pos(rng: random.Random, n: int, head: int = 2048) -> int:
    if n <= 0:
        return 0
    r = rng.random()
    if r < 0.55:
        return rng.randrange(min(n, head))
    if r < 0.7:
        return n - 1 - rng.randrange(min(n, 256))
    return rng.randrange(n)


def _value_for(rng, width: int, ctx: MutationContext, n: int) -> int:
    pool = list(INTERESTING[width]) + [v for v in ctx.extra_values if v < (1 << (8 * width))]
    pool += [v for v in (n, n + 1, n - 1, n // 2) if 0 <= v < (1 << (8 * width))]
    return rng.choice(pool)


def m_bitflip(buf, rng, ctx):
    k = rng.choice((1, 1, 1, 2, 3, 4, 8))
    where = []
    for _ in range(k):
        p = _pos(rng, len(buf), ctx.head)
        buf[p] ^= 1 << rng.randrange(8)
        where.append(p)
    return f"bitflip@{','.join(map(str, where))}"


def m_byte(buf, rng, ctx):
    k = rng.randint(1, 4)
    where = []
    for _ in range(k):
        p = _pos(rng, len(buf), ctx.head)
        v = rng.choice(INTERESTING[1]) if rng.random() < 0.8 else rng.randrange(256)
        buf[p] = v
        where.append(f"{p}={v:#04x}")
    return "byte " + ",".join(where)


def _write_int(buf, off: int, width: int, order: str, value: int) -> None:
    b = (value % (1 << (8 * width))).to_bytes(width, order)
    end = min(len(buf), off + width)
    buf[off:end] = b[: end - off]


def m_field(buf, rng, ctx):
    f = rng.choice(ctx.fields)
    if f.offset >= len(buf):
        return m_bitflip(buf, rng, ctx)
    v = _value_for(rng, f.width, ctx, len(buf))
    _write_int(buf, f.offset, f.width, f.order, v)
    return f"field {f.name or f.offset}@{f.offset}={v:#x}"


def m_field_arith(buf, rng, ctx):
    f = rng.choice(ctx.fields)
    if f.offset + f.width > len(buf):
        return m_bitflip(buf, rng, ctx)
    old = int.from_bytes(bytes(buf[f.offset:f.offset + f.width]), f.order)
    delta = rng.choice((1, 2, 3, 4, 8, 16, 255, 256, 1024, -1, -2, -4, -8, -16, -256, -old, old))
    _write_int(buf, f.offset, f.width, f.order, old + delta)
    return f"field {f.name or f.offset}@{f.offset}{delta:+d}"


def m_int(buf, rng, ctx):
    width = rng.choice((2, 4, 4, 8))
    order = rng.choice(("little", "big"))
    p = _pos(rng, len(buf), ctx.head)
    v = _value_for(rng, width, ctx, len(buf))
    _write_int(buf, p, width, order, v)
    return f"int{8 * width}{order[0]}e@{p}={v:#x}"


def m_truncate(buf, rng, ctx):
    n = len(buf)
    cut = rng.choice((_pos(rng, n, ctx.head), rng.randrange(n + 1), n - 1, n // 2, 132, 128, 8, 1, 0))
    cut = max(0, min(n, cut))
    del buf[cut:]
    return f"truncate@{cut}"


def _span(rng, n: int) -> int:
    return rng.choice((1, 2, 4, 8, 16, 64, 256, 1024, rng.randint(1, max(1, n // 4))))


def m_delete(buf, rng, ctx):
    a = _pos(rng, len(buf), ctx.head)
    k = _span(rng, len(buf))
    del buf[a:a + k]
    return f"delete[{a}:+{k}]"


def m_duplicate(buf, rng, ctx):
    a = _pos(rng, len(buf), ctx.head)
    k = _span(rng, len(buf))
    b = _pos(rng, len(buf), ctx.head)
    chunk = bytes(buf[a:a + k])
    buf[b:b] = chunk * rng.choice((1, 1, 2, 16))
    return f"duplicate[{a}:+{k}]@{b}"


def m_insert(buf, rng, ctx):
    p = _pos(rng, len(buf), ctx.head)
    k = rng.choice((1, 2, 4, 16, 256, 4096))
    fill = rng.choice(("00", "ff", "rnd"))
    data = bytes(k) if fill == "00" else b"\xff" * k if fill == "ff" else rng.randbytes(k)
    buf[p:p] = data
    return f"insert {k}x{fill}@{p}"


def m_splice(buf, rng, ctx):
    if not ctx.others:
        return m_truncate(buf, rng, ctx)
    other = rng.choice(ctx.others)
    a = _pos(rng, len(buf), ctx.head)
    b = rng.randrange(max(1, len(other)))
    buf[a:] = other[b:b + 256 * 1024]
    return f"splice@{a}<-other[{b}:]"


def m_append(buf, rng, ctx):
    k = rng.choice((1, 7, 8, 100, 4096))
    buf.extend(rng.randbytes(k))
    return f"append {k}"


BYTE_OPS = (
    (m_bitflip, 3.0), (m_byte, 2.0), (m_field, 4.0), (m_field_arith, 2.0), (m_int, 1.0), (m_truncate, 2.0),
    (m_delete, 1.5), (m_duplicate, 1.5), (m_insert, 1.0), (m_splice, 0.5), (m_append, 0.5),
)


def byte_mutate(data: bytes, rng: random.Random, ctx: MutationContext, n_ops: Optional[int] = None) -> tuple:
    buf = bytearray(data)
    if n_ops is None:
        n_ops = rng.choices((1, 2, 3), (0.6, 0.25, 0.15))[0]
    ops = [(f, w) for f, w in BYTE_OPS if ctx.fields or f not in (m_field, m_field_arith)]
    descs = []
    for _ in range(n_ops):
        if not buf:
            buf.extend(rng.randbytes(rng.choice((1, 8, 132))))
            descs.append("refill")
            continue
        fn = rng.choices([f for f, _ in ops], [w for _, w in ops])[0]
        descs.append(fn(buf, rng, ctx))
    return bytes(buf), "; ".join(descs)


# ==================================================================================================
# Film seeds
# ==================================================================================================


@dataclass
class Seed:
    name: str
    data: bytes
    suffix: str
    kind: str  # dicom | png | jpeg | tiff | bmp
    weight: float = 1.0
    fields: list = field(default_factory=list)
    extra_values: tuple = ()
    ds: object = None  # pydicom Dataset template (DICOM seeds)
    encoding: tuple = (True, True, False, True)  # preamble, file meta, implicit VR, little endian


_UID_ROOT = "1.2.826.0.1.3680043.10.999"  # fixed UIDs: the factory's random ones would make seeds vary


def _fix_uids(ds, n: int) -> None:
    ds.SOPInstanceUID = f"{_UID_ROOT}.{n}.1"
    ds.StudyInstanceUID = f"{_UID_ROOT}.{n}.2"
    ds.SeriesInstanceUID = f"{_UID_ROOT}.{n}.3"
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _quiet_pydicom():
    import pydicom

    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def encode_dicom(ds, *, preamble: bool = True, meta: bool = True, implicit: bool = False, little: bool = True) -> bytes:
    """Write ``ds`` exactly as told, whatever its file meta claims (that is the point of a wrong syntax)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    head = b"\x00" * 128 + b"DICM" if preamble else b""
    meta_bytes = b""
    if meta and getattr(ds, "file_meta", None) is not None:
        for enforce in (True, False):
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
            try:
                write_file_meta_info(fp, copy.deepcopy(ds.file_meta), enforce_standard=enforce)
            except Exception:  # noqa: BLE001 - a mutation removed a required element: write it as it is
                continue
            meta_bytes = fp.getvalue()
            break
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)  # the dataset's own elements only: file_meta is not one of them
    return head + meta_bytes + fp.getvalue()


def dicom_fields(data: bytes, implicit_hint: Optional[bool] = None) -> list:
    """Offsets of element length fields (and tags) in an encoded dataset, found by scanning for explicit VR
    headers and, for implicit VR data, by walking the top-level elements with pydicom."""
    fields = []
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
    short_vrs = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                 b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
    limit = min(len(data), 64 * 1024)
    for k in range(0, limit - 8, 2):
        vr = data[k + 4:k + 6]
        if vr in long_vrs and data[k + 6:k + 8] == b"\x00\x00":
            fields.append(Field(k + 8, 4, "little", f"len({data[k:k + 4].hex()})"))
            fields.append(Field(k, 4, "little", "tag"))
        elif vr in short_vrs and data[k + 1:k + 2] in (b"\x00", b"\x28", b"\x7f", b"\x08", b"\x10", b"\x20", b"\x18"):
            fields.append(Field(k + 6, 2, "little", f"len({data[k:k + 4].hex()})"))
    if implicit_hint:
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=256)
            for tag in ds.keys():
                raw = ds.get_item(tag)
                tell = getattr(raw, "value_tell", None)
                if tell is not None and tell >= 8:
                    fields.append(Field(tell - 4, 4, "little", f"len({int(tag):08x})"))
                    fields.append(Field(tell - 8, 4, "little", "tag"))
        except Exception:  # noqa: BLE001
            pass
    # the value fields of the image attributes themselves (Rows, Columns, Bits..., Samples per Pixel)
    for tag, name in ((b"\x28\x00\x10\x00", "Rows"), (b"\x28\x00\x11\x00", "Columns"), (b"\x28\x00\x00\x01", "BitsAllocated"),
                      (b"\x28\x00\x01\x01", "BitsStored"), (b"\x28\x00\x02\x00", "SamplesPerPixel"),
                      (b"\x28\x00\x03\x01", "PixelRepresentation"), (b"\x28\x00\x06\x00", "PlanarConfiguration")):
        k = data.find(tag, 132 if data[128:132] == b"DICM" else 0, limit)
        if k >= 0:
            fields.append(Field(k + 8, 2, "little", name))  # explicit (tag, VR, 2-byte length) or implicit (tag, 4-byte length)
    return fields


def png_chunks(data: bytes) -> list:
    """(offset, length, type) of each chunk, as far as the structure parses."""
    out = []
    k = 8
    while k + 8 <= len(data):
        n = int.from_bytes(data[k:k + 4], "big")
        out.append((k, n, data[k + 4:k + 8]))
        if n > len(data):
            break
        k += 12 + n
    return out


def png_fields(data: bytes) -> list:
    fields = []
    for off, _n, kind in png_chunks(data):
        fields.append(Field(off, 4, "big", f"len({kind.decode('latin1')})"))
        if kind == b"IHDR":
            fields += [Field(off + 8, 4, "big", "width"), Field(off + 12, 4, "big", "height"),
                       Field(off + 16, 1, "big", "depth"), Field(off + 17, 1, "big", "colour"),
                       Field(off + 18, 1, "big", "compression"), Field(off + 19, 1, "big", "filter"),
                       Field(off + 20, 1, "big", "interlace")]
    return fields


def png_fix_crc(data: bytes) -> bytes:
    """Recompute every chunk CRC that can be located, so mutations are judged by the decoder, not the checksum."""
    buf = bytearray(data)
    for off, n, _kind in png_chunks(data):
        end = off + 8 + n
        if end + 4 > len(buf):
            break
        buf[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(buf[off + 4:end])) & 0xFFFFFFFF)
    return bytes(buf)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def jpeg_fields(data: bytes) -> list:
    fields = []
    k = 2
    while k + 4 <= len(data) and data[k] == 0xFF:
        marker = data[k + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            k += 2
            continue
        n = int.from_bytes(data[k + 2:k + 4], "big")
        fields.append(Field(k + 2, 2, "big", f"len(FF{marker:02X})"))
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA):
            fields += [Field(k + 4, 1, "big", "precision"), Field(k + 5, 2, "big", "height"),
                       Field(k + 7, 2, "big", "width"), Field(k + 9, 1, "big", "components")]
            for c in range(min(data[k + 9] if k + 9 < len(data) else 0, 4)):
                fields += [Field(k + 11 + 3 * c, 1, "big", f"sampling{c}"), Field(k + 12 + 3 * c, 1, "big", f"qtable{c}")]
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            fields.append(Field(k + 4, 1, "big", "scan components"))
            break
        if marker in (0xC4, 0xDB):
            fields.append(Field(k + 4, 1, "big", "table id"))
        k += 2 + n
    return fields


_TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}


def tiff_fields(data: bytes) -> tuple:
    """IFD entry fields of a TIFF (every page), and the IFD offsets (good values for a looping 'next IFD')."""
    fields, ifds = [], []
    if len(data) < 8:
        return fields, ()
    order = "little" if data[:2] == b"II" else "big"
    fields.append(Field(4, 4, order, "first IFD"))
    off = int.from_bytes(data[4:8], order)
    seen = set()
    while 0 < off < len(data) - 2 and off not in seen:
        seen.add(off)
        ifds.append(off)
        count = int.from_bytes(data[off:off + 2], order)
        fields.append(Field(off, 2, order, "IFD count"))
        for e in range(count):
            p = off + 2 + 12 * e
            if p + 12 > len(data):
                break
            tag = int.from_bytes(data[p:p + 2], order)
            typ = int.from_bytes(data[p + 2:p + 4], order)
            fields += [Field(p + 2, 2, order, f"type({tag})"), Field(p + 4, 4, order, f"count({tag})")]
            size = _TIFF_TYPES.get(typ, 4)
            fields.append(Field(p + 8, 2 if size == 2 else 4, order, f"value({tag})"))
        nxt = off + 2 + 12 * count
        fields.append(Field(nxt, 4, order, "next IFD"))
        off = int.from_bytes(data[nxt:nxt + 4], order) if nxt + 4 <= len(data) else 0
    return fields, tuple(ifds) + (8,)


def bmp_fields(data: bytes) -> list:
    spec = ((2, 4, "file size"), (10, 4, "pixel offset"), (14, 4, "header size"), (18, 4, "width"), (22, 4, "height"),
            (26, 2, "planes"), (28, 2, "bpp"), (30, 4, "compression"), (34, 4, "image size"), (46, 4, "colours used"),
            (50, 4, "important colours"))
    return [Field(o, w, "little", n) for o, w, n in spec if o + w <= len(data)]


def _pil_bytes(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _raster_seeds() -> list:
    import numpy as np
    from PIL import Image

    from dicom_factory import ramp

    h, w = 40, 48
    g8 = ramp(h, w, 0, 255, np.uint8)
    g16 = ramp(h, w, 0, 4095, np.uint16)
    rgb = np.stack([g8, g8[::-1], 255 - g8], axis=-1)
    L = Image.fromarray(g8, "L")
    RGB = Image.fromarray(rgb, "RGB")
    I16 = Image.fromarray(g16)  # mode I;16
    RGBA = Image.fromarray(np.concatenate([rgb, g8[..., None]], axis=-1), "RGBA")
    P = RGB.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    seeds = [
        ("png_L8", _pil_bytes(L, "PNG"), ".png", "png"),
        ("png_I16", _pil_bytes(I16, "PNG"), ".png", "png"),
        ("png_RGB", _pil_bytes(RGB, "PNG"), ".png", "png"),
        ("png_RGBA", _pil_bytes(RGBA, "PNG"), ".png", "png"),
        ("png_P", _pil_bytes(P, "PNG"), ".png", "png"),
        ("png_LA", _pil_bytes(RGBA.convert("LA"), "PNG"), ".png", "png"),
        ("png_1bit", _pil_bytes(L.convert("1"), "PNG"), ".png", "png"),
        ("png_exif", _pil_bytes(L, "PNG", exif=exif.tobytes()), ".png", "png"),
        ("jpeg_L", _pil_bytes(L, "JPEG", quality=90), ".jpg", "jpeg"),
        ("jpeg_RGB", _pil_bytes(RGB, "JPEG", quality=90), ".jpg", "jpeg"),
        ("jpeg_progressive", _pil_bytes(RGB, "JPEG", progressive=True), ".jpeg", "jpeg"),
        ("jpeg_exif_rot", _pil_bytes(L, "JPEG", exif=exif.tobytes()), ".jpg", "jpeg"),
        ("jpeg_CMYK", _pil_bytes(RGB.convert("CMYK"), "JPEG"), ".jpg", "jpeg"),
        ("tiff_L8", _pil_bytes(L, "TIFF"), ".tif", "tiff"),
        ("tiff_I16", _pil_bytes(I16, "TIFF"), ".tif", "tiff"),
        ("tiff_F32", _pil_bytes(Image.fromarray(g16.astype(np.float32) / 7.0, "F"), "TIFF"), ".tiff", "tiff"),
        ("tiff_RGB_lzw", _pil_bytes(RGB, "TIFF", compression="tiff_lzw"), ".tif", "tiff"),
        ("tiff_deflate", _pil_bytes(L, "TIFF", compression="tiff_adobe_deflate"), ".tif", "tiff"),
        ("tiff_packbits", _pil_bytes(L, "TIFF", compression="packbits"), ".tif", "tiff"),
        ("tiff_multipage", _pil_bytes(L, "TIFF", save_all=True, append_images=[L.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]),
         ".tif", "tiff"),
        ("bmp_L8", _pil_bytes(L, "BMP"), ".bmp", "bmp"),
        ("bmp_RGB", _pil_bytes(RGB, "BMP"), ".bmp", "bmp"),
        ("bmp_1bit", _pil_bytes(L.convert("1"), "BMP"), ".bmp", "bmp"),
        ("bmp_RGBA", _pil_bytes(RGBA, "BMP"), ".bmp", "bmp"),
    ]
    out = []
    for name, data, suffix, kind in seeds:
        s = Seed(name, data, suffix, kind)
        if kind == "png":
            s.fields = png_fields(data)
        elif kind == "jpeg":
            s.fields = jpeg_fields(data)
        elif kind == "tiff":
            s.fields, s.extra_values = tiff_fields(data)
        elif kind == "bmp":
            s.fields = bmp_fields(data)
        out.append(s)
    return out


def _dicom_factory_seeds() -> list:
    import numpy as np

    _quiet_pydicom()
    import dicom_factory as F
    from pydicom.pixels.utils import pack_bits
    from pydicom.uid import ExplicitVRBigEndian

    h, w = 40, 32
    g8 = F.ramp(h, w, 0, 255, np.uint8)
    rgb = np.stack([g8, g8[::-1], 255 - g8], axis=-1)
    made = []

    def add(name, ds, *, meta=True, implicit=False):
        _fix_uids(ds, len(made))
        made.append((name, ds, meta, implicit))

    add("dcm_u16", F.make_dataset())
    add("dcm_mono1_windows", F.make_dataset(
        photometric="MONOCHROME1", WindowCenter=[2048, 600], WindowWidth=[4096, 1500],
        WindowCenterWidthExplanation=["FULL", "LUNG"], RescaleSlope="1.5", RescaleIntercept="-1024",
        PixelSpacing=[0.2, 0.2], VOILUTFunction="SIGMOID"))
    add("dcm_signed", F.make_dataset(F.ramp(h, w, -2000, 2000, np.int16), bits_stored=16, signed=True,
                                     modality="DX", sop_class=F.DX_STORAGE, ImagerPixelSpacing=[0.15, 0.15]))
    add("dcm_padding_inverse", F.make_dataset(PixelPaddingValue=0, PresentationLUTShape="INVERSE"))
    add("dcm_8bit", F.make_dataset(bits_allocated=8, bits_stored=8))
    add("dcm_32bit", F.make_dataset(F.ramp(h, w, 0, 100000, np.uint32), bits_allocated=32, bits_stored=32))
    one = F.make_dataset(bits_allocated=8, bits_stored=8)
    one.BitsAllocated, one.BitsStored, one.HighBit = 1, 1, 0
    one.PixelData = pack_bits((g8 > 127).astype(np.uint8).ravel())
    add("dcm_1bit", one)
    add("dcm_rgb", F.make_dataset(rgb, photometric="RGB", bits_allocated=8, bits_stored=8, sop_class=F.SC_STORAGE))
    add("dcm_rgb_planar", F.make_dataset(rgb, photometric="RGB", bits_allocated=8, bits_stored=8, planar=1))
    pal = F.make_dataset(bits_allocated=8, bits_stored=8, photometric="PALETTE COLOR")
    ramp16 = (np.arange(256, dtype=np.uint16) * 257)
    for colour, arr in (("Red", ramp16), ("Green", ramp16[::-1].copy()), ("Blue", ramp16 // 2)):
        setattr(pal, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(pal, f"{colour}PaletteColorLookupTableData", arr.astype("<u2").tobytes())
    add("dcm_palette", pal)
    add("dcm_multiframe", F.make_dataset(np.stack([F.ramp(h, w, 0, 4095)] * 3), modality="DX", sop_class=F.DX_STORAGE))
    add("dcm_ct_volume", F.make_dataset(np.stack([F.ramp(h, w, 0, 4095)] * 2), modality="CT",
                                        sop_class=F.ENHANCED_CT_STORAGE))
    add("dcm_modality_lut", F.make_dataset(ModalityLUTSequence=F.modality_lut_sequence(0, np.arange(4096) // 2)))
    add("dcm_voi_lut", F.make_dataset(VOILUTSequence=F.voi_lut_sequence(0, np.arange(4096) * 16 // 4096, 8, "LUT")))
    add("dcm_rle", F.compress(F.make_dataset(), F.RLELossless))
    add("dcm_rle_rgb", F.compress(F.make_dataset(rgb, photometric="RGB", bits_allocated=8, bits_stored=8), F.RLELossless))
    add("dcm_jpegls", F.compress(F.make_dataset(), F.JPEGLSLossless))
    add("dcm_j2k", F.compress(F.make_dataset(), F.JPEG2000Lossless))
    add("dcm_jpeg", F.compress(F.make_dataset(bits_allocated=8, bits_stored=8), F.JPEGBaseline8Bit))
    # mid-size compressed films: a decoder that misbehaves in proportion to the image shows it here
    from cxrviewer.testing import chest_like

    film = chest_like(320, 288, seed=3)
    for syntax, label in ((F.RLELossless, "rle"), (F.JPEGLSLossless, "jpegls"), (F.JPEG2000Lossless, "j2k"),
                          (F.JPEGBaseline8Bit, "jpeg")):
        add(f"dcm_{label}_320", F.compress(F.make_dataset(film, bits_allocated=8, bits_stored=8, modality="DX",
                                                          sop_class=F.DX_STORAGE), syntax))
    add("dcm_implicit_nometa", F.make_dataset(), meta=False, implicit=True)
    add("dcm_explicit_nometa", F.make_dataset(), meta=False)
    be = F.make_dataset()
    be.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    add("dcm_big_endian", be)
    deflated = F.make_dataset()
    deflated.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    add("dcm_deflated", deflated)
    sr = F.make_dataset(modality="SR", sop_class=F.BASIC_TEXT_SR)
    del sr.PixelData
    add("dcm_sr_no_pixels", sr)

    seeds = []
    for name, ds, meta, implicit in made:
        if meta:
            buf = io.BytesIO()
            ts = ds.file_meta.TransferSyntaxUID
            if ts == ExplicitVRBigEndian:
                data = encode_dicom(ds, implicit=False, little=False)
            else:
                ds.save_as(buf, enforce_file_format=True)
                data = buf.getvalue()
        else:
            data = encode_dicom(ds, preamble=False, meta=False, implicit=implicit)
        seeds.append(_dicom_seed(name, data, ".dcm" if meta or implicit else ""))
    return seeds


def _dicom_seed(name: str, data: bytes, suffix: str, weight: float = 1.0) -> Seed:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    preamble = data[128:132] == b"DICM"
    if ts is not None:
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    else:
        implicit, little = ds.original_encoding
        implicit = True if implicit is None else implicit
        little = True if little is None else little
    return Seed(name, data, suffix, "dicom", weight, dicom_fields(data, implicit), ds=ds,
                encoding=(preamble, ts is not None, implicit, little))


@dataclass
class Bombs:
    """Real side×side images (7745: 60.0 MP, just under the default pixel limit) in a small file: compressed
    PNG IDAT streams, one all-zero RLE segment of that many bytes (a DICOM RLE frame is 1 to 15 of them), and
    raw deflate blocks of ``deflate_mb`` MiB of zeros (a deflated DICOM dataset)."""

    side: int = 7745
    streams: dict = field(default_factory=dict)  # (bit depth, colour type) -> zlib stream
    rle_segment: bytes = b""
    deflate_mb: int = 0
    deflate_zeros: bytes = b""  # raw deflate blocks of deflate_mb MiB of zeros, ending in a full flush


def make_bombs(kinds=((8, 0), (16, 0), (8, 6)), deflate_mb: int = 1024, side: int = 7745) -> Bombs:
    """``side`` 7745: 60.0 MP, the most the default pixel limit lets through (tests use smaller ones)."""
    b = Bombs(side=side)
    for depth, colour in kinds:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        row = bytes(1 + b.side * channels * depth // 8)
        z = zlib.compressobj(9)
        parts = [z.compress(row) for _ in range(b.side)]
        parts.append(z.flush())
        b.streams[(depth, colour)] = b"".join(parts)
    b.rle_segment = rle_zero_segment(b.side * b.side)
    if deflate_mb:
        z = zlib.compressobj(1, zlib.DEFLATED, -15)
        chunk = bytes(1 << 20)
        b.deflate_zeros = b"".join([z.compress(chunk) for _ in range(deflate_mb)] + [z.flush(zlib.Z_FULL_FLUSH)])
        b.deflate_mb = deflate_mb
    return b


def deflate_bomb(seed: Seed, bombs: Bombs) -> tuple:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to ``bombs.deflate_mb`` MiB: the
    seed's elements, a private OB element of zeros, the pixel data. Deflate blocks ending in a full flush
    do not refer back, so the precomputed zeros are spliced between two freshly compressed parts."""
    from pydicom.dataset import FileMetaDataset

    _quiet_pydicom()
    ds = copy.deepcopy(seed.ds)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    full = encode_dicom(ds, preamble=True, meta=True, implicit=False, little=True)
    body = encode_dicom(ds, preamble=False, meta=False, implicit=False, little=True)
    head = full[: len(full) - len(body)]
    k = body.find(b"\xe0\x7f\x10\x00")
    k = len(body) if k < 0 else k
    elem = struct.pack("<HH", 0x0009, 0x1010) + b"OB\x00\x00" + struct.pack("<I", bombs.deflate_mb << 20)
    z1 = zlib.compressobj(6, zlib.DEFLATED, -15)
    part1 = z1.compress(body[:k] + elem) + z1.flush(zlib.Z_FULL_FLUSH)
    z3 = zlib.compressobj(6, zlib.DEFLATED, -15)
    part3 = z3.compress(body[k:]) + z3.flush()
    return head + part1 + bombs.deflate_zeros + part3, f"dicom: deflated dataset inflating to {bombs.deflate_mb} MiB"


def rle_zero_segment(n: int) -> bytes:
    """A DICOM RLE (PackBits) segment that decodes to ``n`` zero bytes, in about n / 64 bytes."""
    seg = b"\x81\x00" * (n // 128)  # 0x81: repeat the next byte 128 times
    if n % 128:
        seg += bytes([(257 - n % 128) & 0xFF, 0])
    return seg + (b"\x00" if len(seg) % 2 else b"")


def rle_frame(segments: list, offsets: Optional[list] = None) -> bytes:
    """An RLE frame: the 64-byte header (segment count, 15 offsets) and the segments."""
    if offsets is None:
        offsets, pos = [], 64
        for sg in segments:
            offsets.append(pos)
            pos += len(sg)
    header = struct.pack("<16I", len(segments), *(list(offsets) + [0] * (15 - len(offsets))))
    return header + b"".join(segments)


def dicom_rle_bomb(seed: Seed, rng: random.Random, bombs: Bombs) -> tuple:
    """A side×side RLE frame (60 MP by default) of any sample layout the header allows, in a file of 1-11 MB."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    _quiet_pydicom()
    bits, spp = rng.choice(((8, 1), (16, 1), (32, 1), (64, 1), (8, 3), (16, 3), (32, 3)))
    n_seg = spp * bits // 8
    ds = copy.deepcopy(seed.ds)
    ds.Rows = ds.Columns = bombs.side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = bits, bits, bits - 1, spp
    ds.PhotometricInterpretation = "RGB" if spp == 3 else "MONOCHROME2"
    if spp == 3:
        ds.PlanarConfiguration = 1
    for kw in ("NumberOfFrames", "ModalityLUTSequence", "VOILUTSequence"):
        if kw in ds:
            delattr(ds, kw)
    segs = [bombs.rle_segment] * min(n_seg, 15)
    how = rng.choice(("whole", "whole", "cut", "lying offsets"))
    if how == "cut":
        segs[-1] = segs[-1][: len(segs[-1]) // 3]
    offsets = None
    if how == "lying offsets":
        end = 64 + sum(len(sg) for sg in segs)
        offsets = [rng.choice((0, 64, 0x7FFFFFFF, end * 2)) for _ in segs]
    ds.PixelData = encapsulate([rle_frame(segs, offsets)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if getattr(ds, "file_meta", None) is None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    data = encode_dicom(ds, preamble=True, meta=True, implicit=False, little=True)
    return data, f"dicom: {bombs.side}x{bombs.side} RLE frame, {spp} x {bits} bits ({how})"


def build_film_seeds(include_samples: bool = True) -> list:
    seeds = []
    if include_samples:
        for p in sorted((REPO / "resources" / "samples").iterdir()):
            if p.suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg"):
                data = p.read_bytes()
                if p.suffix.lower() == ".dcm":
                    seeds.append(_dicom_seed("sample:" + p.name, data, p.suffix, weight=1.5))
                else:
                    seeds.append(Seed("sample:" + p.name, data, p.suffix, "png" if data[:4] == b"\x89PNG" else "jpeg",
                                      1.5, png_fields(data) if data[:4] == b"\x89PNG" else jpeg_fields(data)))
    seeds += _dicom_factory_seeds()
    seeds += _raster_seeds()
    return seeds


# ==================================================================================================
# DICOM structure mutations
# ==================================================================================================


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    return int(tag_for_keyword(keyword))


def _raw(ds, keyword_or_tag, payload: bytes) -> None:
    """Put arbitrary bytes as an element's value (VR UN; readers take the dictionary VR and must cope)."""
    from pydicom.dataelem import DataElement

    tag = _tag(keyword_or_tag) if isinstance(keyword_or_tag, str) else int(keyword_or_tag)
    if len(payload) % 2:
        payload += b" " if payload[-1:].isascii() and payload[-1:].isalnum() else b"\x00"
    elem = DataElement(tag, "UN", payload)
    elem.VR = "UN"  # the constructor swaps UN for the dictionary VR; the raw bytes are the point here
    elem.value = payload
    ds[tag] = elem


def _us(v: int, little: bool = True) -> bytes:
    return struct.pack("<H" if little else ">H", v & 0xFFFF)


def _us_payload(rng, v: int, little: bool) -> bytes:
    r = rng.random()
    if r < 0.85:
        return _us(v, little)
    return rng.choice((b"", b"\x01", _us(v, little) + b"\x00\x00", _us(v, little) * 3))


def _set_us(ds, keyword: str, rng, v: int, little: bool) -> None:
    """A US attribute: usually written as a proper US element, sometimes as raw bytes of any length."""
    if 0 <= v <= 0xFFFF and rng.random() < 0.6:
        setattr(ds, keyword, v)
    else:
        _raw(ds, keyword, _us_payload(rng, v, little))


def _ds_rows(ds) -> tuple:
    try:
        return int(ds.Rows), int(ds.Columns)
    except Exception:  # noqa: BLE001
        return 40, 32


def s_size(ds, rng, enc):
    r0, c0 = _ds_rows(ds)
    pairs = [(0, 0), (0, c0), (r0, 0), (1, 1), (65535, 65535), (7745, 7745), (7746, 7746), (65535, 915), (915, 65535),
             (r0 * 2, c0), (r0, c0 + 1), (r0 - 1, c0), (r0 * 4, c0 * 4), (3, 3), (65535, 1), (1, 65535)]
    r, c = rng.choice(pairs)
    _set_us(ds, "Rows", rng, r, enc[3])
    _set_us(ds, "Columns", rng, c, enc[3])
    return f"Rows×Columns={r}×{c}"


def s_bits(ds, rng, enc):
    kw = rng.choice(("BitsAllocated", "BitsStored", "HighBit", "BitsAllocated", "all"))
    v = rng.choice((0, 1, 7, 8, 12, 15, 16, 17, 24, 32, 33, 63, 64, 65, 255, 65535))
    for k in (("BitsAllocated", "BitsStored", "HighBit") if kw == "all" else (kw,)):
        _set_us(ds, k, rng, v - 1 if k == "HighBit" and kw == "all" else v, enc[3])
    return f"{kw}={v}"


def s_samples(ds, rng, enc):
    v = rng.choice((0, 2, 3, 4, 5, 255, 65535))
    _set_us(ds, "SamplesPerPixel", rng, v, enc[3])
    if rng.random() < 0.3:
        _raw(ds, "PhotometricInterpretation", b"RGB ")
    return f"SamplesPerPixel={v}"


def s_photometric(ds, rng, enc):
    v = rng.choice(("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_RCT",
                    "YBR_ICT", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK", "MONOCHROME3", "", "\x00\x00", "X" * 64))
    _raw(ds, "PhotometricInterpretation", v.encode("latin1"))
    return f"Photometric={v[:16]!r}"


def s_planar(ds, rng, enc):
    v = rng.choice((0, 1, 2, 65535))
    _set_us(ds, "PlanarConfiguration", rng, v, enc[3])
    return f"PlanarConfiguration={v}"


def s_frames(ds, rng, enc):
    v = rng.choice(("0", "-1", "2", "3", "7", "1000000", "2147483647", "99999999999999999999", "abc", "1.5", "", " ",
                    "1\\2", "1e9", "NaN"))
    _raw(ds, "NumberOfFrames", v.encode())
    if rng.random() < 0.3:
        _raw(ds, "Modality", rng.choice((b"CT", b"MR", b"XA", b"DX")))
    return f"NumberOfFrames={v!r}"


def s_pixrep(ds, rng, enc):
    v = rng.choice((0, 1, 2, 65535))
    _set_us(ds, "PixelRepresentation", rng, v, enc[3])
    return f"PixelRepresentation={v}"


_NUMS = ("nan", "NaN", "inf", "-inf", "1e309", "-1e309", "1e38", "-1e38", "0", "-0", "1e-320", "", "abc", "1\\2\\3",
         "3.4e38", "-2147483649", "9" * 40)


def s_rescale(ds, rng, enc):
    kw = rng.choice(("RescaleSlope", "RescaleIntercept"))
    v = rng.choice(_NUMS)
    _raw(ds, kw, v.encode())
    return f"{kw}={v!r}"


def s_window(ds, rng, enc):
    c, w = rng.choice(_NUMS + ("40",)), rng.choice(_NUMS + ("400",))
    _raw(ds, "WindowCenter", c.encode())
    _raw(ds, "WindowWidth", w.encode())
    extra = ""
    if rng.random() < 0.3:
        fn = rng.choice(("SIGMOID", "LINEAR_EXACT", "GARBAGE", ""))
        _raw(ds, "VOILUTFunction", fn.encode())
        extra = f", VOILUTFunction={fn!r}"
    if rng.random() < 0.2:
        _raw(ds, "WindowCenter", "\\".join(["1"] * 5000).encode())
        extra += ", 5000 centers"
    return f"Window={c!r}/{w!r}{extra}"


def _lut_item(rng, little: bool):
    from pydicom.dataset import Dataset

    n = rng.choice((0, 1, 2, 256, 4096, 65535))
    first = rng.choice((0, 1, 0x8000, 0xFFFF, 100))
    bits = rng.choice((0, 1, 8, 10, 16, 17, 32, 65535))
    size = rng.choice((0, 1, 2, n, n + 7, 4096)) if n else rng.choice((0, 2, 65536))
    item = Dataset()
    desc = b"".join(_us(v, little) for v in (n, first, bits))
    if rng.random() < 0.15:
        desc = desc[: rng.choice((0, 2, 4))]
    _raw(item, 0x00283002, desc)
    if rng.random() < 0.9:
        data = (struct.pack("<H", rng.randrange(65536)) * size)[: 2 * size]
        _raw(item, 0x00283006, data)
    return item, f"LUT n={n} first={first} bits={bits} data={size}"


def s_lut(ds, rng, enc):
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    kw = rng.choice(("ModalityLUTSequence", "VOILUTSequence"))
    k = rng.choice((0, 1, 1, 1, 2))
    items, desc = [], []
    for _ in range(k):
        it, d = _lut_item(rng, enc[3])
        items.append(it)
        desc.append(d)
    ds[_tag(kw)] = DataElement(_tag(kw), "SQ", Sequence(items))
    return f"{kw}[{k}]: " + "; ".join(desc)


def s_palette(ds, rng, enc):
    _raw(ds, "PhotometricInterpretation", b"PALETTE COLOR ")
    desc = []
    for colour in rng.sample(("Red", "Green", "Blue"), rng.randint(0, 3)):
        n = rng.choice((0, 1, 256, 65535))
        first = rng.choice((0, 1, 0xFFFF))
        bits = rng.choice((0, 8, 16, 17, 65535))
        _raw(ds, f"{colour}PaletteColorLookupTableDescriptor", b"".join(_us(v, enc[3]) for v in (n, first, bits)))
        size = rng.choice((0, 1, n, 256, n + 3))
        _raw(ds, f"{colour}PaletteColorLookupTableData", bytes(2 * size))
        desc.append(f"{colour} n={n} first={first} bits={bits} data={size}")
    return "palette: " + ("; ".join(desc) or "no tables")


def s_pixeldata(ds, rng, enc):
    from pydicom.encaps import encapsulate

    elem = ds.get("PixelData") if "PixelData" in ds else None
    data = bytes(elem) if isinstance(elem, (bytes, bytearray)) else b""
    op = rng.choice(("cut", "cut", "empty", "one", "odd", "extend", "vr", "float", "encapsulate", "fragments",
                     "bot", "garbage"))
    if op == "cut":
        k = rng.choice((len(data) // 2, len(data) - 1, len(data) - 2, 8, len(data) // 5))
        ds.PixelData = data[:max(0, k)]
        return f"PixelData cut to {max(0, k)} of {len(data)}"
    if op == "empty":
        ds.PixelData = b""
        return "PixelData empty"
    if op == "one":
        ds.PixelData = b"\x01\x00"
        return "PixelData 2 bytes"
    if op == "odd":
        ds.PixelData = data + b"\x00"
        return "PixelData odd length"
    if op == "extend":
        ds.PixelData = data + rng.randbytes(rng.choice((2, 64, 4096)))
        return "PixelData extended"
    if op == "vr" and "PixelData" in ds:
        v = rng.choice(("OB", "OW", "UN", "OF", "UT", "SQ"))
        try:
            ds["PixelData"].VR = v
        except Exception:  # noqa: BLE001
            pass
        return f"PixelData VR {v}"
    if op == "float" and "PixelData" in ds:
        del ds.PixelData
        tag = rng.choice((0x7FE00008, 0x7FE00009))
        ds.add_new(tag, "OF" if tag == 0x7FE00008 else "OD", bytes(rng.choice((0, 8, 5120))))
        return f"PixelData replaced by ({tag:08X})"
    if op in ("encapsulate", "fragments", "bot", "garbage"):
        frames = [data or b"\x00\x00"]
        if op == "fragments":
            frames = [data[k:k + 64] for k in range(0, len(data), 64)] or [b"\x00\x00"]
        if op == "garbage":
            frames = [rng.randbytes(rng.choice((0, 1, 2, 100, 4000))) for _ in range(rng.randint(1, 3))]
        frames = [f + b"\x00" if len(f) % 2 else f for f in frames]
        enc_data = bytearray(encapsulate(frames, has_bot=True))
        if op == "bot" and len(enc_data) >= 12:
            _write_int(enc_data, 8, 4, "little", rng.choice((0xFFFFFFFF, 0x7FFFFFFF, 3, len(enc_data) * 4)))
        ds.PixelData = bytes(enc_data)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return f"PixelData {op} ({len(frames)} fragments)"
    ds.PixelData = rng.randbytes(64)
    return "PixelData random"


_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
             "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
             "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
             "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100",
             "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.1.98", "1.2.3.4", "", "not a uid", "1.2.840.10008.1.2 ",
             "1" * 64)


def s_syntax(ds, rng, enc):
    from pydicom.dataset import FileMetaDataset

    v = rng.choice(_SYNTAXES)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = v
    enc[1] = True  # with a file meta header, the syntax is what the reader is told
    return f"TransferSyntaxUID={v!r}"


def s_delete(ds, rng, enc):
    kw = rng.choice(("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PhotometricInterpretation",
                     "PixelData", "NumberOfFrames", "Modality", "SOPClassUID", "HighBit", "PixelRepresentation",
                     "<TransferSyntaxUID>", "<file meta>", "<preamble>"))
    if kw == "<TransferSyntaxUID>":
        if getattr(ds, "file_meta", None) is not None and "TransferSyntaxUID" in ds.file_meta:
            del ds.file_meta.TransferSyntaxUID
    elif kw == "<file meta>":
        enc[1] = False
    elif kw == "<preamble>":
        enc[0] = False
    elif kw in ds:
        delattr(ds, kw)
    return f"delete {kw}"


def s_strings(ds, rng, enc):
    op = rng.choice(("charset", "name", "dates", "spacing", "padding", "private", "presentation"))
    if op == "charset":
        v = rng.choice(("ISO 2022 IR 87\\ISO 2022 IR 159", "GB18030", "nonsense", "ISO_IR 192", "\\\\\\", "ISO 2022 IR 13"))
        _raw(ds, "SpecificCharacterSet", v.encode())
        _raw(ds, "PatientName", rng.choice((b"\xff\xfe\x1b$B\x00", b"\x1b$)C\xa1", b"\xc3\x28", b"Doe^\x00\x00Jane")))
        return f"charset {v!r} + invalid name bytes"
    if op == "name":
        _raw(ds, "PatientName", rng.randbytes(rng.choice((1, 64, 4096, 70000))))
        return "PatientName random bytes"
    if op == "dates":
        for kw in ("StudyDate", "PatientBirthDate", "PatientAge"):
            _raw(ds, kw, rng.choice((b"99999999", b"20240230", b"30000101", b"abc", b"00000000", b"1")))
        return "dates garbage"
    if op == "spacing":
        v = rng.choice(("0\\0", "nan\\1", "1", "", "-1\\-1", "1e400\\1", "inf\\inf", "a\\b", "1\\2\\3"))
        _raw(ds, rng.choice(("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")), v.encode())
        return f"spacing {v!r}"
    if op == "padding":
        _raw(ds, "PixelPaddingValue", rng.choice((b"", b"\x01", b"\xff\xff", b"\x00\x80", b"\x01\x02\x03\x04")))
        if rng.random() < 0.5:
            _raw(ds, "PixelPaddingRangeLimit", rng.choice((b"\x00\x00", b"\xff\xff", b"\x01")))
        return "pixel padding garbage"
    if op == "private":
        ds.add_new(0x00091010, "OB", rng.randbytes(rng.choice((100, 20000, 200000))))
        return "private blob"
    _raw(ds, "PresentationLUTShape", rng.choice((b"INVERSE ", b"IDENTITY", b"\x00\x00", b"inverse ")))
    return "PresentationLUTShape"


def p_length(data: bytes, rng, ds, enc) -> tuple:
    """After encoding: make one element's length field lie."""
    tags = [t for t in ds.keys()] or [0x7FE00010]
    tag = int(rng.choice(tags + [0x7FE00010] * 3))
    pat = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    k = data.find(pat, 132 if data[128:132] == b"DICM" else 0)
    if k < 0:
        return data, "length lie: tag not found"
    buf = bytearray(data)
    vr = data[k + 4:k + 6]
    implicit = enc[2]
    if not implicit and vr.isalpha() and vr.isupper():
        long_vr = vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
        off, width = (k + 8, 4) if long_vr else (k + 6, 2)
    else:
        off, width = k + 4, 4
    old = int.from_bytes(data[off:off + width], "little")
    v = rng.choice((0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE, old + 2, max(0, old - 2), len(data)))
    _write_int(buf, off, width, "little", v)
    return bytes(buf), f"length of ({tag:08X}) {old}->{v:#x}"


def p_nesting(data: bytes, rng, ds, enc) -> tuple:
    """After encoding: insert undefined-length sequences nested N deep before the pixel data."""
    n = rng.choice((10, 200, 1000, 5000, 20000))
    if enc[2]:
        level = struct.pack("<HHI", 0x0040, 0xA730, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    else:
        level = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + \
            struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    k = data.find(b"\xe0\x7f\x10\x00")
    if k < 0:
        k = len(data)
    closed = rng.random() < 0.5
    tail = (struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)) * n if closed else b""
    return data[:k] + level * n + tail + data[k:], f"{n} nested sequences ({'closed' if closed else 'unterminated'})"


DICOM_OPS = (
    (s_size, 3.0), (s_bits, 2.0), (s_samples, 1.0), (s_photometric, 1.0), (s_planar, 0.5), (s_frames, 1.5),
    (s_pixrep, 0.5), (s_rescale, 1.0), (s_window, 1.0), (s_lut, 1.5), (s_palette, 0.7), (s_pixeldata, 2.5),
    (s_syntax, 2.0), (s_delete, 1.5), (s_strings, 1.0),
)
DICOM_POST_OPS = ((p_length, 1.0), (p_nesting, 0.35))


def dicom_struct_mutate(seed: Seed, rng: random.Random) -> tuple:
    _quiet_pydicom()
    ds = copy.deepcopy(seed.ds)
    enc = list(seed.encoding)
    descs = []
    for _ in range(rng.choices((1, 2, 3), (0.55, 0.3, 0.15))[0]):
        fn = rng.choices([f for f, _ in DICOM_OPS], [w for _, w in DICOM_OPS])[0]
        try:
            descs.append(fn(ds, rng, enc))
        except Exception as exc:  # noqa: BLE001 - pydicom refused to hold the value: note it, go on
            descs.append(f"{fn.__name__} not applied ({type(exc).__name__})")
    try:
        data = encode_dicom(ds, preamble=enc[0], meta=enc[1], implicit=enc[2], little=enc[3])
    except Exception as exc:  # noqa: BLE001 - unwritable: fall back to the seed bytes
        data = seed.data
        descs.append(f"unwritable ({type(exc).__name__}), seed bytes used")
    if rng.random() < 0.25:
        fn = rng.choices([f for f, _ in DICOM_POST_OPS], [w for _, w in DICOM_POST_OPS])[0]
        data, d = fn(data, rng, ds, enc)
        descs.append(d)
    return data, "dicom: " + "; ".join(descs)


# ==================================================================================================
# PNG structure mutations
# ==================================================================================================


def png_struct_mutate(seed: Seed, rng: random.Random, bombs: Optional[Bombs]) -> tuple:
    data = seed.data
    chunks = [(data[o + 4:o + 8], data[o + 8:o + 8 + n]) for o, n, _k in png_chunks(data)]
    ops = {"ihdr": 2.0, "drop": 1.0, "repeat": 1.0, "swap": 1.0, "textbomb": 1.0, "exif": 1.0, "split_idat": 1.0,
           "idat_size": 1.0, "big_chunk": 1.0, "plte": 1.0, "bomb": 0.5 if bombs and bombs.streams else 0.0}
    op = rng.choices(list(ops), list(ops.values()))[0]
    desc = op
    if op == "bomb" and bombs and bombs.streams:
        depth, colour = rng.choice(sorted(bombs.streams))
        ihdr = struct.pack(">IIBBBBB", bombs.side, bombs.side, depth, colour, 0, 0, 0)
        idat = bombs.streams[(depth, colour)]
        if rng.random() < 0.3:
            idat = idat[: len(idat) // 2]
            desc = "bomb (cut)"
        out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
        return out, f"png: {bombs.side}x{bombs.side} image, depth {depth} colour {colour} {desc}"
    if op == "ihdr":
        for i, (k, p) in enumerate(chunks):
            if k == b"IHDR" and len(p) >= 13:
                w, h, d, c, comp, filt, inter = struct.unpack(">IIBBBBB", p[:13])
                what = rng.choice(("w", "h", "wh", "d", "c", "dc", "inter", "comp"))
                if "w" in what:
                    w = rng.choice((0, 1, 7745, 7746, 65535, 0x7FFFFFFF, 0xFFFFFFFF, w * 2, w + 1))
                if "h" in what:
                    h = rng.choice((0, 1, 7745, 7746, 65535, 0x7FFFFFFF, 0xFFFFFFFF, h * 2, h - 1))
                if "d" in what:
                    d = rng.choice((0, 1, 2, 3, 4, 8, 16, 32, 255))
                if "c" in what:
                    c = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 255))
                if what == "inter":
                    inter = rng.choice((1, 2, 255))
                if what == "comp":
                    comp, filt = rng.choice(((1, 0), (0, 1), (255, 255)))
                chunks[i] = (k, struct.pack(">IIBBBBB", w, h, d, c, comp, filt, inter) + p[13:])
                desc = f"IHDR {w}x{h} depth {d} colour {c} interlace {inter} comp {comp}/{filt}"
                break
    elif op == "drop" and chunks:
        i = rng.randrange(len(chunks))
        desc = f"drop {chunks[i][0]!r}"
        del chunks[i]
    elif op == "repeat" and chunks:
        i = rng.randrange(len(chunks))
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[i])
        desc = f"repeat {chunks[i][0]!r}"
    elif op == "swap" and len(chunks) > 1:
        i, j = rng.sample(range(len(chunks)), 2)
        chunks[i], chunks[j] = chunks[j], chunks[i]
        desc = f"swap {i},{j}"
    elif op == "textbomb":
        kind = rng.choice((b"zTXt", b"iTXt", b"iCCP"))
        z = zlib.compress(bytes(rng.choice((1 << 20, 8 << 20, 32 << 20))), 9)
        payload = {b"zTXt": b"Comment\x00\x00" + z, b"iTXt": b"Comment\x00\x01\x00\x00\x00" + z,
                   b"iCCP": b"icc\x00\x00" + z}[kind]
        chunks.insert(1, (kind, payload))
        desc = f"{kind.decode()} bomb ({len(z)} bytes compressed)"
    elif op == "exif":
        from PIL import Image

        ex = Image.Exif()
        ex[0x0112] = rng.choice((0, 2, 3, 4, 5, 6, 7, 8, 9, 65535))
        payload = ex.tobytes()
        if rng.random() < 0.4:
            payload = bytearray(payload)
            payload[rng.randrange(len(payload))] ^= 0xFF
            payload = bytes(payload)
        chunks.insert(1, (b"eXIf", payload))
        desc = f"eXIf orientation {ex[0x0112]}"
    elif op == "split_idat":
        out = []
        for k, p in chunks:
            if k == b"IDAT":
                out += [(k, p[j:j + 1]) for j in range(len(p))]
            else:
                out.append((k, p))
        chunks = out
        desc = "IDAT split into 1-byte chunks"
    elif op == "idat_size":
        for i, (k, p) in enumerate(chunks):
            if k == b"IDAT":
                try:
                    raw = zlib.decompress(p)
                except zlib.error:
                    raw = b""
                raw = raw[: len(raw) // 2] if rng.random() < 0.5 else raw + bytes(len(raw) + 100)
                chunks[i] = (k, zlib.compress(raw))
                desc = f"IDAT inflates to {len(raw)} bytes"
                break
    elif op == "big_chunk":
        out = b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, p) for k, p in chunks[:1])
        n = rng.choice((0x7FFFFFFF, 0xFFFFFFFF, 0x10000000))
        out += struct.pack(">I", n) + rng.choice((b"tEXt", b"IDAT", b"zzZz")) + b"x" * 64
        return out, f"png: chunk declaring {n:#x} bytes"
    elif op == "plte":
        chunks.insert(1, (b"PLTE", rng.randbytes(rng.choice((0, 3, 5, 768, 771)))))
        if rng.random() < 0.5:
            chunks.insert(2, (b"tRNS", rng.randbytes(rng.choice((0, 2, 6, 300)))))
        desc = "PLTE/tRNS injected"
    out = b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, p) for k, p in chunks)
    return out, "png: " + desc


# ==================================================================================================
# The load_film target
# ==================================================================================================


class FilmTarget:
    name = "load_film"
    outcomes = ("film", "FilmError", "crash", "memory", "hang", "modified")
    error_outcomes = ("FilmError",)

    def __init__(self, seeds: list, bombs: Optional[Bombs] = None):
        self.seeds = seeds
        self.weights = [s.weight for s in seeds]
        self.bombs = bombs
        self.others = [s.data for s in seeds if len(s.data) < 300_000]

    def make_case(self, index: int, rng: random.Random) -> Case:
        import warnings

        with warnings.catch_warnings():  # pydicom warns about every invalid value the mutations write
            warnings.simplefilter("ignore")
            return self._make_case(rng)

    def _make_case(self, rng: random.Random) -> Case:
        seed = rng.choices(self.seeds, self.weights)[0]
        ctx = MutationContext(seed.fields, seed.extra_values, self.others)
        r = rng.random()
        bomb_ok = seed.kind == "dicom" and self.bombs is not None and seed.ds is not None and "PixelData" in seed.ds
        if bomb_ok and r < 0.003:
            data, desc = dicom_rle_bomb(seed, rng, self.bombs)
        elif bomb_ok and r < 0.005 and self.bombs.deflate_zeros:
            data, desc = deflate_bomb(seed, self.bombs)
        elif seed.kind == "dicom" and r < 0.5:
            data, desc = dicom_struct_mutate(seed, rng)
            if rng.random() < 0.2:
                data, d2 = byte_mutate(data, rng, MutationContext(dicom_fields(data), (), self.others), 1)
                desc += " + " + d2
        elif seed.kind == "png" and r < 0.35:
            data, desc = png_struct_mutate(seed, rng, self.bombs)
        elif seed.kind in ("jpeg", "tiff", "bmp") and r < 0.4 and seed.fields:
            buf = bytearray(seed.data)
            descs = [rng.choice((m_field, m_field, m_field_arith))(buf, rng, ctx) for _ in range(rng.randint(1, 2))]
            data, desc = bytes(buf), "fields: " + "; ".join(descs)
        else:
            data, desc = byte_mutate(seed.data, rng, ctx)
            if seed.kind == "png" and rng.random() < 0.7:
                data = png_fix_crc(data)
                desc += " (CRCs fixed)"
        suffix = seed.suffix
        if rng.random() < 0.08:
            suffix = rng.choice((".dcm", ".png", ".jpg", ".tif", ".bmp", "", ".1", ".DCM", ".txt"))
            desc += f" [named {suffix or 'without suffix'}]"
        return Case(seed.name, desc, data, suffix)

    def child_setup(self, workdir: Path) -> None:
        import importlib

        importlib.import_module("cxrviewer.film.loader")  # imported before the first case is timed

    def execute(self, path: Path, case: Case, workdir: Path) -> tuple:
        from cxrviewer.film import Film, FilmError, load_film

        try:
            film = load_film(path)
        except FilmError as exc:
            mem = memory_error_in(exc)
            if mem is not None:
                return "memory", True, f"MemoryError (address-space cap), reported as: {exc.reason[:160]}"
            if exc.path is None or exc.path.name != path.name:
                return "crash", True, f"FilmError does not name the file: {exc}"
            return "FilmError", False, exc.reason
        except MemoryError as exc:
            return "memory", True, describe_exception(exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ... all count as crashes
            return "crash", True, describe_exception(exc)
        problems = []
        if not isinstance(film, Film):
            problems.append(f"returned {type(film).__name__}")
        else:
            px = film.pixels
            if getattr(px, "ndim", 0) != 2 or str(getattr(px, "dtype", "")) != "float32" or not px.size:
                problems.append(f"pixels {getattr(px, 'shape', '?')} {getattr(px, 'dtype', '?')}")
        if problems:
            return "bad-film", True, "; ".join(problems)
        return "film", False, f"{film.kind} {film.pixels.shape[1]}x{film.pixels.shape[0]}"

    def check_after(self, case: Case, workdir: Path):
        return None

    def debug(self, workdir: Path, case: Case) -> None:
        """Open the case in this process and print the traceback (``--case`` does this for a crash)."""
        from cxrviewer.film import load_film

        p = workdir / f"debug{case.suffix}"
        p.write_bytes(case.data)
        try:
            load_film(p)
            print("  (no exception in-process)")
        except BaseException:  # noqa: BLE001
            traceback.print_exc()


# ==================================================================================================
# Command line
# ==================================================================================================


def _progress(done: int, total: int, elapsed: float) -> None:
    print(f"  {done}/{total} cases, {elapsed:.0f} s", file=sys.stderr, flush=True)


def add_common_args(ap: argparse.ArgumentParser, default_cases: int) -> None:
    ap.add_argument("--cases", type=int, default=default_cases, help=f"number of cases (default {default_cases})")
    ap.add_argument("--quick", action="store_true", help="500 cases")
    ap.add_argument("--seed", type=int, default=1, help="run seed (default 1): case i of seed S is always the same")
    ap.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    ap.add_argument("--case", type=int, action="append", help="run only this case (repeatable), with details")
    ap.add_argument("--save-case", type=Path, help="with --case: also write the mutated file(s) here")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel workers (default 2)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per case before it is a hang")
    ap.add_argument("--mem-mb", type=int, default=DEFAULT_MEM_MB,
                    help=f"resident memory a case may add, MB (default {DEFAULT_MEM_MB})")
    ap.add_argument("--as-mb", type=int, default=DEFAULT_AS_MB,
                    help=f"address space a worker may reserve (RLIMIT_AS headroom), MB (default {DEFAULT_AS_MB})")
    ap.add_argument("--batch", type=int, default=200, help="cases per forked worker")


def run_cli(args, target, script: str) -> int:
    if args.case:
        rc = 0
        with tempfile.TemporaryDirectory(prefix="cxr-fuzz-case-") as tmp:
            target.child_setup(Path(tmp))
            for i in args.case:
                c = target.make_case(i, case_rng(args.seed, i))
                print(f"case #{i} (seed {args.seed}): seed file {c.seed}, {len(c.data)} bytes, suffix {c.suffix!r}")
                print(f"  mutation: {c.mutation}")
                rep = run_fuzz(target, seed=args.seed, indices=[i], jobs=1, timeout=args.timeout, mem_mb=args.mem_mb,
                               as_mb=args.as_mb, batch=1, workdir=Path(tmp))
                r = rep.results[0]
                print(f"  outcome: {r.outcome}{' (FAILURE)' if r.failure else ''} in {r.seconds:.2f} s, "
                      f"+{r.added_mb:.0f} MB resident (worker peak {r.peak_rss_mb:.0f} MB)")
                print(f"  detail: {r.detail}")
                if args.save_case:
                    args.save_case.mkdir(parents=True, exist_ok=True)
                    out = args.save_case / f"case{i}{c.suffix}"
                    out.write_bytes(c.data)
                    print(f"  saved: {out}")
                if r.failure:
                    rc = 1
                if r.outcome == "crash" and hasattr(target, "debug"):  # not a hang or a blow-up: safe in-process
                    print("  in-process re-run, with the traceback:")
                    target.debug(Path(tmp), c)
        return rc
    n = 500 if args.quick else args.cases
    indices = range(args.start, args.start + n)
    print(f"{target.name}: {len(target.seeds)} seed files, {n} cases, seed {args.seed}, {args.jobs} workers; limits "
          f"per case: {args.timeout:g} s, +{args.mem_mb} MB resident, +{args.as_mb} MB address space", flush=True)
    report = run_fuzz(target, seed=args.seed, indices=indices, jobs=args.jobs, timeout=args.timeout,
                      mem_mb=args.mem_mb, as_mb=args.as_mb, batch=args.batch, progress=_progress)
    print_report(report, target, script)
    return 1 if report.failures else 0


def machine_line() -> str:
    import platform

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv=None) -> int:
    # workers are forked from this process: keep native thread pools single-threaded (set before numpy and
    # torch load; not at import, so tests/test_fuzz.py does not change the environment of the test session)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, 10000)
    ap.add_argument("--no-samples", action="store_true", help="leave out resources/samples/ (faster)")
    ap.add_argument("--no-bombs", action="store_true", help="leave out the 60-megapixel PNG cases")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    seeds = build_film_seeds(include_samples=not args.no_samples)
    bombs = None if args.no_bombs else make_bombs()
    target = FilmTarget(seeds, bombs)
    print(f"{machine_line()}; seeds built in {time.perf_counter() - t0:.1f} s")
    return run_cli(args, target, "bench/fuzz_loader.py")


if __name__ == "__main__":
    sys.exit(main())
