"""``callconsent retention run | recompute``: purge what has expired; re-apply a changed
policy to existing recordings. ``run --as-of DATETIME --dry-run`` previews the purge and key
destruction of another day; a real run as of another day deletes recordings before their
time, so it is refused unless forced by an admin (``--force-as-of``, audited)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from callconsent import config
from callconsent.app import App
from callconsent.authz import authorized_app
from callconsent.errors import CommandError
from callconsent.recordings import retention, retention_rule
from recorder.store import audit

AS_OF_HELP = (
    "judge expiry as on DATETIME (ISO 8601; UTC unless it names a zone; a date alone is its "
    "00:00 UTC): with --dry-run, what would be purged and which key epochs destroyed then"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retention", help="purge expired recordings; re-apply retention policies")
    cmds = p.add_subparsers(dest="retention_command", metavar="ACTION")
    cmds.required = True
    run = cmds.add_parser(
        "run",
        help="one purge pass: delete expired recordings, then destroy spent key epochs",
        description="Delete the ciphertext of every expired recording that is not under legal "
        "hold, in batches, each with an audit row; then destroy the private key of every "
        "expiry epoch no live recording needs. Safe to run on several hosts at once. Exit "
        "status 1 if any file could not be removed (it is retried next time).",
    )
    run.add_argument("--dry-run", action="store_true", help="print what would go; change nothing")
    run.add_argument("--json", action="store_true", help="machine-readable report")
    run.add_argument("--as-of", metavar="DATETIME", type=as_of_datetime, help=AS_OF_HELP)
    run.add_argument(
        "--force-as-of",
        action="store_true",
        help="really purge and destroy keys as of --as-of: deletes recordings before their "
        "time (a test host proving a policy). Needs an admin --actor and a --reason; audited",
    )
    run.add_argument("--actor", help="with --force-as-of: an admin")
    run.add_argument("--reason", help="with --force-as-of: why (kept in the audit log)")
    run.set_defaults(func=run_pass, acts_as_daemon=True)
    rc = cmds.add_parser(
        "recompute",
        help="re-apply the current retention policy to existing recordings (audited)",
        description="A changed policy applies to new recordings only, until this explicit "
        "step: it recomputes expires_at of existing encrypted recordings from their campaign's "
        "current retention category and days. Needs a dpo or admin actor.",
    )
    rc.add_argument("--campaign", help="only this campaign's recordings")
    rc.add_argument("--actor", required=True, help="a dpo or admin from [actors]")
    rc.add_argument("--reason", required=True)
    rc.set_defaults(func=recompute, acts_as_daemon=True)


def as_of_datetime(text: str) -> datetime:
    """``--as-of``: ISO 8601, UTC unless the text names a zone."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2027-01-31 or 2027-01-31T18:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_as_of(args: argparse.Namespace) -> None:
    """A real pass as of another date is refused unless forced, by a named admin, with a
    reason; the refusal says how to preview instead."""
    if args.force_as_of and args.as_of is None:
        raise CommandError("--force-as-of needs --as-of DATETIME")
    if args.as_of is None or args.dry_run:
        return
    if not args.force_as_of:
        raise CommandError(
            f"refused: a purge as of {args.as_of.isoformat()} deletes recordings and destroys "
            "keys before their time. Preview it with --dry-run; on a test host, force it with "
            "--force-as-of --actor ADMIN --reason TEXT (audited)"
        )
    if not args.actor or not args.reason:
        raise CommandError("--force-as-of needs --actor (an admin) and --reason")


def run_pass(args: argparse.Namespace) -> int:
    _check_as_of(args)
    if args.as_of is not None and not args.dry_run:
        with authorized_app(args, "retention.force_as_of", "retention", None) as app:
            with app.db.write() as s:  # before anything goes, so the cause is on record
                audit.append(
                    s,
                    app.audit_ctx,
                    actor=args.actor,
                    action="retention.forced_as_of",
                    subject_type="retention",
                    details={"as_of": args.as_of.isoformat(), "reason": args.reason},
                )
            report = retention(app).run(as_of=args.as_of)
    else:
        app = App.open(config.load(args.config))
        try:
            report = retention(app).run(dry_run=args.dry_run, as_of=args.as_of)
        finally:
            app.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        verb = "would purge" if args.dry_run else "purged"
        when = f" as of {report.as_of.isoformat()}" if report.as_of else ""
        print(
            f"{verb} {len(report.purged)} recording(s){when}; {report.held} expired but held (kept)"
        )
        for rid in report.purged if args.dry_run else []:
            print(f"  {rid}")
        for rid, error in report.failed:
            print(f"FAILED {rid}: {error} (retried next pass)")
        if report.shredded:
            what = "would destroy" if args.dry_run else "destroyed"
            print(f"{what} the private key of epoch(s): {', '.join(report.shredded)}")
        for epoch in report.shred_elsewhere:
            print(
                f"epoch {epoch} is spent, but its private key is not on this host: destroy it "
                "where it is kept"
            )
    return 1 if report.failed else 0


def recompute(args: argparse.Namespace) -> int:
    with authorized_app(args, "retention.recompute", "campaign", args.campaign) as app:
        changed = retention(app).recompute(
            retention_rule(app.config),
            lambda campaign: app.config.policies.for_campaign(campaign).retention_category,
            actor=args.actor,
            reason=args.reason,
            campaign=args.campaign,
        )
    for rid, old, new in changed:
        print(f"{rid}: expires {old:%Y-%m-%d %H:%M} -> {new:%Y-%m-%d %H:%M} UTC")
    print(f"{len(changed)} recording(s) changed")
    return 0
