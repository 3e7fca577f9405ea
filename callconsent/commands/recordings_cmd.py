"""``callconsent recordings list | show | decrypt | verify | import``: the encrypted recordings.

``show`` and ``decrypt`` are audited with your OS account and a mandatory ``--reason``.
``decrypt`` writes the original WAV, byte for byte, and writes nothing if any segment fails to
authenticate. ``verify`` decrypts without writing and compares with the stored hashes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callconsent import config
from callconsent.app import App
from callconsent.authz import NotAllowed, named_actor
from callconsent.commands import custody_cmd
from callconsent.commands.keys_cmd import add_reason_args, add_secret_args, unlock
from callconsent.errors import CommandError
from callconsent.recordings import finalizer
from recorder.finalize.finalizer import FinalizerError
from recorder.finalize.importer import Importer, ImportRefused, ImportRequest
from recorder.store import audit
from recorder.store.models import Call, Recording, RecordingState
from recorder.store.numbers import NotAPhoneNumber, mask
from recorder.vault import directory as vault
from recorder.vault import envelope
from recorder.vault import fileformat as ff

LEGAL_BASES = ("consent", "contract", "legal_obligation", "legitimate_interest")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recordings", help="list, show, decrypt, verify, import, hold and delete recordings"
    )
    cmds = p.add_subparsers(dest="recordings_command", metavar="ACTION")
    cmds.required = True
    ls = cmds.add_parser("list", help="recordings and their state (no audio, not audited)")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--state", choices=[s.value for s in RecordingState])
    ls.add_argument("--campaign")
    ls.add_argument("--number", help="a phone number in any common notation")
    ls.add_argument("--limit", type=int, default=1000)
    ls.set_defaults(func=list_recordings)
    sh = cmds.add_parser("show", help="one recording's metadata (audited)")
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true")
    add_reason_args(sh)
    sh.set_defaults(func=show)
    de = cmds.add_parser(
        "decrypt",
        help="write the original WAV (audited; needs the private keys)",
        description="Decrypt to OUT only if every segment authenticates and the result matches "
        "the stored SHA-256; on any failure nothing is written.",
    )
    de.add_argument("id")
    de.add_argument("-o", "--out", required=True, help="the WAV file to write (mode 0600)")
    add_reason_args(de)
    add_secret_args(de)
    de.set_defaults(func=decrypt)
    ve = cmds.add_parser(
        "verify",
        help="check that ciphertexts authenticate and match their stored hashes",
        description="Exit status 1 if any recording fails.",
    )
    ve.add_argument("ids", nargs="*", metavar="ID")
    ve.add_argument("--all", action="store_true", help="every encrypted recording")
    add_secret_args(ve)
    ve.set_defaults(func=verify)
    im = cmds.add_parser(
        "import",
        help="encrypt WAVs a PBX already holds, through the finalizer",
        description="Each WAV becomes a call (pbx 'import') with its legal basis and a recording "
        "encrypted like a live one, expiring per the campaign's policy from the recorded time. "
        "Prints the new recording ids. Run it as the daemon's account, never as root.",
    )
    im.add_argument("paths", nargs="+", metavar="PATH")
    im.add_argument("--legal-basis", required=True, choices=LEGAL_BASES)
    im.add_argument("--campaign", default="default")
    im.add_argument("--number", help="the other party's phone number (stored protected)")
    im.add_argument("--recorded-at", help="ISO 8601 (default: each file's modification time)")
    im.add_argument("--delete-source", action="store_true", help="remove each WAV once committed")
    im.add_argument("--json", action="store_true")
    im.add_argument("--actor", help="who imports (default: your OS account)")
    im.set_defaults(func=import_files, acts_as_daemon=True)
    custody_cmd.register_actions(cmds)


def _open(args: argparse.Namespace) -> App:
    """The app; ``--actor``, where the command has one, checked to name a user."""
    app = App.open(config.load(args.config))
    if hasattr(args, "actor"):
        try:
            args.actor = named_actor(app, args.actor)
        except NotAllowed:
            app.close()
            raise
    return app


def _audit(app: App, args: argparse.Namespace, action: str, rid: str, **details: Any) -> None:
    with app.db.write() as s:
        audit.append(
            s,
            app.audit_ctx,
            actor=args.actor,
            action=action,
            subject_type="recording",
            subject_id=rid,
            details={"reason": args.reason, **details},
        )


def _get(app: App, rid: str) -> tuple[Recording, Call]:
    with app.db.read() as s:
        rec = s.get(Recording, rid)
        if rec is None:
            raise CommandError(f"no recording {rid}")
        call = s.get(Call, rec.call_id)
        assert call is not None
        return rec, call


def _summary(rec: Recording, call: Call) -> dict[str, Any]:
    return {
        "id": rec.id,
        "state": rec.state,
        "campaign": call.campaign,
        "pbx": call.pbx,
        "started_at": rec.started_at.isoformat(),
        "duration_ms": rec.duration_ms,
        "key_epoch": rec.key_epoch,
        "expires_at": rec.expires_at.isoformat() if rec.expires_at else None,
        "legal_hold": rec.legal_hold,
    }


def list_recordings(args: argparse.Namespace) -> int:
    app = _open(args)
    try:
        q = select(Recording, Call).join(Call, Call.id == Recording.call_id)
        if args.state:
            q = q.where(Recording.state == args.state)
        if args.campaign:
            q = q.where(Call.campaign == args.campaign)
        if args.number:
            try:
                q = q.where(Call.number_key == app.numbers.lookup_key(args.number))
            except NotAPhoneNumber as exc:
                raise CommandError(f"--number: {exc}") from None
        with app.db.read() as s:
            found = [
                _summary(r, c)
                for r, c in s.execute(q.order_by(Recording.started_at).limit(args.limit))
            ]
    finally:
        app.close()
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"{'id':<36}  {'state':<9}  {'campaign':<12}  {'started (UTC)':<19}  {'min:s':>6}  epoch")
    for r in found:
        ms = r["duration_ms"] or 0
        print(
            f"{r['id']:<36}  {r['state']:<9}  {r['campaign'][:12]:<12}  "
            f"{r['started_at'][:19]:<19}  {ms // 60000:>3}:{ms // 1000 % 60:02d}  "
            f"{r['key_epoch'] or '-'}"
        )
    print(f"{len(found)} recording(s)")
    return 0


def show(args: argparse.Namespace) -> int:
    app = _open(args)
    try:
        rec, call = _get(app, args.id)
        number = app.numbers.reveal(call.number_enc) if call.number_enc else None
        doc = {
            **_summary(rec, call),
            "call_id": call.id,
            "direction": call.direction,
            "number": mask(number),
            "consent_status": call.consent_status,
            "format": rec.format,
            "channels": rec.channels,
            "sample_rate": rec.sample_rate,
            **{
                k: getattr(rec, k)
                for k in (
                    "plaintext_size",
                    "plaintext_sha256",
                    "ciphertext_path",
                    "ciphertext_size",
                    "ciphertext_sha256",
                    "discard_reason",
                    "last_error",
                )
            },
        }
        _audit(app, args, "recording.shown", rec.id)
    finally:
        app.close()
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        for k, v in doc.items():
            print(f"{k:<18} {v if v is not None else '-'}")
    return 0


def _progress(total: int, label: str) -> Callable[[int], None]:
    last = [time.monotonic()]

    def report(done: int) -> None:
        if time.monotonic() - last[0] >= 2:
            last[0] = time.monotonic()
            print(f"{label}: {done * 100 // max(total, 1)}% ({done >> 20} MiB)", file=sys.stderr)

    return report


def decrypt(args: argparse.Namespace) -> int:
    app = _open(args)
    try:
        rec, _ = _get(app, args.id)
        if rec.state != RecordingState.ENCRYPTED or not rec.ciphertext_path:
            raise CommandError(f"recording {rec.id} is {rec.state}: there is nothing to decrypt")
        keys = unlock(app, args)
        out = Path(args.out)
        try:
            size, digest = vault.decrypt_to(
                Path(rec.ciphertext_path),
                rec.id,
                keys.private_key,
                out,
                _progress(rec.plaintext_size or 0, "decrypt"),
            )
            if digest != rec.plaintext_sha256:
                out.unlink()
                raise ff.TamperedError("the plaintext's SHA-256 differs from the stored one")
        except (ff.TamperedError, ff.FormatError, envelope.EnvelopeError, OSError) as exc:
            _audit(app, args, "recording.decrypt_failed", rec.id, error=str(exc)[:300])
            raise CommandError(f"recording {rec.id}: {exc}; nothing was written") from None
        _audit(app, args, "recording.decrypted", rec.id, plaintext_sha256=digest)
    finally:
        app.close()
    print(f"{out}: {size} bytes, sha256 {digest} (matches the stored hash)")
    return 0


def verify(args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        raise CommandError("name recordings to verify, or --all")
    app = _open(args)
    try:
        keys = unlock(app, args)
        with app.db.read() as s:
            q = select(Recording).where(Recording.state == RecordingState.ENCRYPTED)
            if not args.all:
                q = q.where(Recording.id.in_(args.ids))
            recs = list(s.scalars(q.order_by(Recording.encrypted_at)))
        missing = set(args.ids) - {r.id for r in recs}
        failures = [(rid, "not an encrypted recording") for rid in sorted(missing)]
        last, done_bytes = time.monotonic(), 0
        for n, rec in enumerate(recs, 1):
            problem = _check(rec, keys.private_key)
            if problem:
                failures.append((rec.id, problem))
                print(f"FAILED {rec.id}: {problem}")
            done_bytes += rec.ciphertext_size or 0
            if time.monotonic() - last >= 2:
                last = time.monotonic()
                print(f"verify: {n}/{len(recs)} ({done_bytes >> 20} MiB)", file=sys.stderr)
    finally:
        app.close()
    print(f"verified {len(recs)} recording(s): {len(recs) - len(failures) + len(missing)} ok, "
          f"{len(failures)} failed")  # fmt: skip
    return 1 if failures else 0


def _check(rec: Recording, private_key_for: Callable[[str], bytes]) -> str | None:
    try:
        pt_size, pt_sha, ct_size, ct_sha = vault.authenticate(
            Path(rec.ciphertext_path or ""), rec.id, private_key_for
        )
    except (ff.TamperedError, ff.FormatError, envelope.EnvelopeError, OSError) as exc:
        return str(exc)
    if (pt_size, pt_sha) != (rec.plaintext_size, rec.plaintext_sha256):
        return "the plaintext differs from the stored size/SHA-256"
    if (ct_size, ct_sha) != (rec.ciphertext_size, rec.ciphertext_sha256):
        return "the ciphertext differs from the stored size/SHA-256"
    return None


def import_files(args: argparse.Namespace) -> int:
    app = _open(args)
    try:
        try:
            fin = finalizer(app)
        except FinalizerError as exc:
            raise CommandError(str(exc)) from None
        fin.vault.ensure()
        recorded_at = _parse_time(args.recorded_at) if args.recorded_at else None
        policy = app.config.policies.for_campaign(args.campaign)
        req = ImportRequest(
            legal_basis=args.legal_basis,
            campaign=args.campaign,
            retention_category=policy.retention_category,
            recorded_at=recorded_at,
            number=args.number,
            delete_source=args.delete_source,
            actor=args.actor,
        )
        importer, done, failed = Importer(app.ledger, fin), [], 0
        for n, path in enumerate(args.paths, 1):
            try:
                got = importer.import_file(Path(path), req)
            except ImportRefused as exc:
                failed += 1
                print(f"callconsent: import: {exc}", file=sys.stderr)
                continue
            done.append(got)
            if not args.json:
                print(got.recording_id)
            if len(args.paths) > 20 and n % 20 == 0:
                print(f"import: {n}/{len(args.paths)}", file=sys.stderr)
    finally:
        app.close()
    if args.json:
        rows = [
            {
                "recording_id": d.recording_id,
                "call_id": d.call_id,
                "duration_ms": d.duration_ms,
                "sha256": d.plaintext_sha256,
                "source_deleted": d.source_deleted,
            }
            for d in done
        ]
        print(json.dumps(rows, indent=1))
    return 1 if failed else 0


def _parse_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--recorded-at: not ISO 8601: {text!r}") from None
    if at.tzinfo is None:
        raise CommandError("--recorded-at needs a time zone (…Z or +01:00)")
    return at
