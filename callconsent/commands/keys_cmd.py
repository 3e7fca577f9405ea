"""``callconsent keys init | list | rotate | export-public | import-public | destroy``: the key
epochs recordings are sealed to. Private keys are opened with a passphrase or a key file:
``--key-file PATH`` (0600), ``--passphrase-file PATH`` (0600), ``$CALLCONSENT_KEY_PASSPHRASE``,
else a prompt."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from callconsent import config
from callconsent.app import App
from callconsent.authz import named_actor
from callconsent.errors import CommandError
from callconsent.recordings import key_store, retention_rule
from recorder.store import audit
from recorder.store.models import Recording
from recorder.vault.expiry import epochs_between
from recorder.vault.keydir import KeyDir, KeyPermissionError
from recorder.vault.keystore import Epoch, KeyStore, KeyStoreError, PrivateKeys

PASSPHRASE_ENV = "CALLCONSENT_KEY_PASSPHRASE"  # noqa: S105 - the variable's name


def add_secret_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="PATH", help="a file of random bytes (mode 0600)")
    g.add_argument("--passphrase-file", metavar="PATH", help="a file holding the passphrase")


def add_reason_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument("--actor", help="the person asking (default: your OS account)")


def read_secret_first(args: argparse.Namespace) -> None:
    """Before a command started as root switches to the daemon's account: read the secret
    while a root-only --key-file and the terminal are still readable."""
    args.secret = read_secret(args, confirm=args.func is init)


def read_secret(args: argparse.Namespace, *, confirm: bool = False) -> bytes:
    if getattr(args, "secret", None) is not None:
        return bytes(args.secret)
    path = args.key_file or args.passphrase_file
    if path:
        p = Path(path)
        try:
            KeyDir(p.parent).check_file(p)
            data = p.read_bytes()
        except (OSError, KeyPermissionError) as exc:
            raise CommandError(f"cannot use {p}: {exc}") from None
        return data if args.key_file else data.rstrip(b"\r\n")
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if not sys.stdin.isatty():
        raise CommandError(
            "the private keys need a passphrase: --key-file, --passphrase-file or "
            f"${PASSPHRASE_ENV}"
        )
    first = getpass.getpass("key store passphrase: ").encode()
    if confirm and getpass.getpass("again: ").encode() != first:
        raise CommandError("the passphrases differ")
    return first


def unlock(app: App, args: argparse.Namespace) -> PrivateKeys:
    try:
        return key_store(app).unlock(read_secret(args))
    except (KeyStoreError, KeyPermissionError) as exc:
        raise CommandError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the key epochs recordings are encrypted to")
    cmds = p.add_subparsers(dest="keys_command", metavar="ACTION")
    cmds.required = True
    i = cmds.add_parser(
        "init",
        help="create the key store and its epochs",
        description="Create the key store (private keys encrypted under your passphrase or key "
        "file) and one key pair per week of expiry, from now to well past the longest retention.",
    )
    add_secret_args(i)
    i.set_defaults(func=init, acts_as_daemon=True, before_switch=read_secret_first)
    ls = cmds.add_parser("list", help="the epochs, their keys and how far ahead they reach")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_epochs)
    r = cmds.add_parser(
        "rotate",
        help="add the epochs of the coming weeks",
        description="Each week of expiry has its own key, so keys rotate by themselves; this "
        "creates the epochs that keep the runway ahead. Run it monthly; the daemon warns when "
        "fewer than [recorder] runway_warning_weeks remain.",
    )
    add_secret_args(r)
    r.set_defaults(func=rotate, acts_as_daemon=True, before_switch=read_secret_first)
    e = cmds.add_parser("export-public", help="write the public keys as JSON (audited)")
    e.add_argument("-o", "--out", help="file to write (default: standard output)")
    add_reason_args(e)
    e.set_defaults(func=export_public)
    m = cmds.add_parser(
        "import-public",
        help="publish public keys exported on the keys host (on a PBX host without private keys)",
        description="Read a file written by `keys export-public` on the host that keeps the "
        "private keys and publish its epochs in this host's store (audited): the daemon here "
        "then encrypts to them and never holds a private key. Run it again after each `keys "
        "rotate` there; epochs already here are checked, not duplicated.",
    )
    m.add_argument("file", metavar="FILE", help="the JSON of `keys export-public` ('-': stdin)")
    m.add_argument("--actor", help="the person importing (default: your OS account)")
    m.set_defaults(func=import_public, acts_as_daemon=True, before_switch=read_public_first)
    d = cmds.add_parser(
        "destroy",
        help="destroy a spent epoch's private key on this host (crypto-shredding; dpo/admin)",
        description="For an epoch whose week is over and that no live recording needs: delete "
        "its private key file here, so its recordings are unreadable everywhere. The retention "
        "pass does this by itself where the keys live; run this where they are kept elsewhere.",
    )
    d.add_argument("epoch", help="e.g. 2026-W50")
    d.add_argument("--reason", required=True)
    d.add_argument("--actor", required=True, help="a dpo or admin from [actors]")
    d.set_defaults(func=destroy, acts_as_daemon=True)


def _horizon(app: App) -> list[str]:
    now = datetime.now(UTC)
    rule = retention_rule(app.config)
    until = now + timedelta(days=rule.longest_days, weeks=app.config.recorder.epochs_ahead_weeks)
    return epochs_between(now, until)


def init(args: argparse.Namespace) -> int:
    app = App.open(config.load(args.config))
    try:
        store = key_store(app)
        if store.initialised:
            raise CommandError(f"a key store exists in {store.keydir.path}: use `keys rotate`")
        try:
            keys = store.init(read_secret(args, confirm=True))
        except KeyStoreError as exc:
            raise CommandError(str(exc)) from None
        created = keys.ensure_epochs(_horizon(app), actor=app.audit_ctx.os_user)
        print(f"key store created in {store.keydir.path}")
        _report(created)
    finally:
        app.close()
    return 0


def rotate(args: argparse.Namespace) -> int:
    app = App.open(config.load(args.config))
    try:
        created = unlock(app, args).ensure_epochs(_horizon(app), actor=app.audit_ctx.os_user)
        _report(created)
    finally:
        app.close()
    return 0


def _report(created: list[Epoch]) -> None:
    if created:
        print(f"created {len(created)} epochs: {created[0].id} … {created[-1].id}")
    else:
        print("no epoch to add: the runway is complete")


def _runway_line(app: App, store: KeyStore) -> tuple[str, bool]:
    runway = store.runway(datetime.now(UTC), retention_rule(app.config).longest_days)
    weeks = runway / timedelta(weeks=1)
    low = weeks < app.config.recorder.runway_warning_weeks
    text = f"runway: {weeks:.1f} weeks of epochs beyond the longest retention"
    return (text + ("  WARNING: run `callconsent keys rotate`" if low else "")), low


def list_epochs(args: argparse.Namespace) -> int:
    app = App.open(config.load(args.config))
    try:
        store = key_store(app)
        with app.db.read() as s:
            q = select(Recording.key_epoch, func.count()).group_by(Recording.key_epoch)
            counts = {epoch: n for epoch, n in s.execute(q)}
        rows = []
        for e in store.epochs():
            has_private = (store.keydir.path / f"epoch-{e.id}.key").exists()
            rows.append(
                {
                    "epoch": e.id,
                    "expires_from": e.expires_from.isoformat(),
                    "expires_until": e.expires_until.isoformat(),
                    "fingerprint": e.fingerprint,
                    "private_key": "destroyed"
                    if e.destroyed_at
                    else ("present" if has_private else "elsewhere"),
                    "recordings": counts.get(e.id, 0),
                }
            )
        line, low = _runway_line(app, store)
        if args.json:
            print(json.dumps({"epochs": rows, "runway_low": low}, indent=1))
            return 0
        print(f"{'epoch':<10} {'expiring from':<12} {'fingerprint':<18} {'private':<10} recordings")
        for r in rows:
            print(
                f"{r['epoch']:<10} {r['expires_from'][:10]:<12} {r['fingerprint'][:16]:<18} "
                f"{r['private_key']:<10} {r['recordings']}"
            )
        print(f"{len(rows)} epochs; {line}")
    finally:
        app.close()
    return 0


def export_public(args: argparse.Namespace) -> int:
    app = App.open(config.load(args.config))
    try:
        actor = named_actor(app, args.actor)
        epochs = key_store(app).epochs()
        doc = {
            "format": PUBLIC_FORMAT,
            "epochs": [
                {
                    "epoch": e.id,
                    "suite": e.suite,
                    "public_key": e.public_key.hex(),
                    "fingerprint": e.fingerprint,
                    "expires_from": e.expires_from.isoformat(),
                    "expires_until": e.expires_until.isoformat(),
                }
                for e in epochs
                if e.destroyed_at is None
            ],
        }
        with app.db.write() as s:
            audit.append(
                s,
                app.audit_ctx,
                actor=actor,
                action="keys.exported_public",
                subject_type="key_store",
                details={"reason": args.reason, "epochs": len(doc["epochs"])},
            )
        text = json.dumps(doc, indent=1) + "\n"
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
    finally:
        app.close()
    return 0


PUBLIC_FORMAT = "callconsent public keys v1"


def read_public_first(args: argparse.Namespace) -> None:
    """Read the file while root still can (it may sit in root's home)."""
    args.public_doc = _read_public(args.file)


def _read_public(name: str) -> dict:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        doc = json.loads(text)
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{name}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PUBLIC_FORMAT:
        raise CommandError(f"{name}: not a file of `callconsent keys export-public`")
    return doc


def import_public(args: argparse.Namespace) -> int:
    doc = getattr(args, "public_doc", None) or _read_public(args.file)
    app = App.open(config.load(args.config))
    try:
        try:
            created = key_store(app).import_public(
                doc["epochs"], actor=named_actor(app, args.actor)
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CommandError(f"{args.file}: a damaged epoch entry ({exc})") from None
        except KeyStoreError as exc:
            raise CommandError(f"{args.file}: {exc}") from None
        print(f"imported {len(created)} of {len(doc['epochs'])} public keys")
        line, _ = _runway_line(app, key_store(app))
        print(line)
    finally:
        app.close()
    return 0


def destroy(args: argparse.Namespace) -> int:
    from callconsent.authz import authorized_app
    from callconsent.recordings import retention

    with authorized_app(args, "keys.destroy", "key_epoch", args.epoch) as app:
        if args.epoch not in retention(app).spent_epochs():
            raise CommandError(
                f"epoch {args.epoch} is not spent: its week is not over, a live recording still "
                "needs it, or it is destroyed already (see callconsent keys list)"
            )
        if not key_store(app).destroy_private(args.epoch, args.actor, args.reason):
            raise CommandError(f"the private key of {args.epoch} is not on this host")
    print(f"{args.epoch}: private key destroyed")
    return 0
