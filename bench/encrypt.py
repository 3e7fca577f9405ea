"""Streaming encryption of whole recordings (the vault's STREAM format, fsync included) against
cryptography's one-shot AESGCM over the same bytes, in the same run.

Each side runs in its own child process, so ``ru_maxrss`` is that side's peak memory: the
one-shot peer holds the whole file (twice), the stream holds one segment. Goals: ratio of
throughputs >= 0.5, peak RSS <= 64 MiB for a 1 GB file.

    python bench/encrypt.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FILES_FULL = [  # (name, sample rate, channels, seconds)
    ("60 min 8 kHz mono", 8000, 1, 3600),
    ("60 min 48 kHz stereo", 48000, 2, 3600),
    ("1 GB (93 min 48 kHz stereo)", 48000, 2, 5593),
]
FILES_QUICK = FILES_FULL[:2]


def make_wav(path: Path, rate: int, channels: int, seconds: int) -> int:
    """Noise-like audio written in 1 MiB blocks (never all in memory)."""
    block = os.urandom(1 << 20)
    left = rate * channels * 2 * seconds
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.setnframes(left // (2 * channels))
        while left > 0:
            n = min(left, len(block))
            w.writeframesraw(block[:n])
            left -= n
    return path.stat().st_size


def child_stream(src: Path, out_dir: Path) -> dict[str, float]:
    from recorder.vault import envelope
    from recorder.vault.directory import Vault

    _, public = envelope.generate_keypair()
    rid = "00000000-0000-4000-8000-00000000b001"
    key = os.urandom(32)
    slot = envelope.wrap(key, public, rid, "2026-W50")

    def chunks() -> object:
        with src.open("rb", buffering=0) as f:
            while block := f.read(1 << 20):
                yield block

    t = time.perf_counter()
    sealed = Vault(out_dir).seal(rid, chunks(), key, [slot])  # type: ignore[arg-type]
    seconds = time.perf_counter() - t
    sealed.path.unlink()
    return {"seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def child_oneshot(src: Path, out_dir: Path) -> dict[str, float]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(os.urandom(32))
    out = out_dir / "oneshot.bin"
    t = time.perf_counter()
    data = src.read_bytes()
    sealed = aead.encrypt(os.urandom(12), data, None)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    view = memoryview(sealed)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - t
    out.unlink()
    return {"seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def run_child(kind: str, src: Path, out_dir: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(src), str(out_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="no 1 GB file, one round (< 1 min)")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, src, out = args.child
        fn = child_stream if kind == "stream" else child_oneshot
        print(json.dumps(fn(Path(src), Path(out))))
        return
    rounds = 1 if args.quick else 3
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-encrypt-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for name, rate, channels, seconds in FILES_QUICK if args.quick else FILES_FULL:
            src = work / "input.wav"
            size = make_wav(src, rate, channels, seconds)
            best: dict[str, dict[str, float]] = {}
            for _ in range(rounds):
                for kind in ("stream", "oneshot"):
                    r = run_child(kind, src, work)
                    if kind not in best or r["seconds"] < best[kind]["seconds"]:
                        best[kind] = r
            src.unlink()
            mbs = {k: size / 1e6 / v["seconds"] for k, v in best.items()}
            results.append(
                {
                    "file": name,
                    "mb": round(size / 1e6, 1),
                    "stream_mb_s": round(mbs["stream"], 1),
                    "oneshot_mb_s": round(mbs["oneshot"], 1),
                    "ratio": round(mbs["stream"] / mbs["oneshot"], 3),
                    "stream_peak_rss_mib": round(best["stream"]["maxrss_kib"] / 1024, 1),
                    "oneshot_peak_rss_mib": round(best["oneshot"]["maxrss_kib"] / 1024, 1),
                }
            )
    print(f"{'file':<30} {'MB':>8} {'stream MB/s':>12} {'one-shot MB/s':>14} {'ratio':>6} "
          f"{'stream RSS':>11} {'one-shot RSS':>13}")  # fmt: skip
    for r in results:
        print(
            f"{r['file']:<30} {r['mb']:>8} {r['stream_mb_s']:>12} {r['oneshot_mb_s']:>14} "
            f"{r['ratio']:>6} {r['stream_peak_rss_mib']:>8} MiB {r['oneshot_peak_rss_mib']:>9} MiB"
        )
    worst_ratio = min(r["ratio"] for r in results)
    peak = max(r["stream_peak_rss_mib"] for r in results)
    print(f"goals: ratio >= 0.5 (worst {worst_ratio}), stream peak RSS <= 64 MiB (max {peak})")
    summary = {
        "bench": "encrypt",
        "quick": args.quick,
        "files": results,
        "worst_ratio": worst_ratio,
        "max_stream_peak_rss_mib": peak,
        "goal_ratio_met": worst_ratio >= 0.5,
        "goal_rss_met": peak <= 64,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
