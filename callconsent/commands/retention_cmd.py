"""``callconsent retention run | recompute``: purge what has expired; re-apply a changed
policy to existing recordings."""

from __future__ import annotations

import argparse
import json

from callconsent import config
from callconsent.app import App
from callconsent.authz import authorized_app
from callconsent.recordings import retention, retention_rule


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
    run.set_defaults(func=run_pass)
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
    rc.set_defaults(func=recompute)


def run_pass(args: argparse.Namespace) -> int:
    app = App.open(config.load(args.config))
    try:
        report = retention(app).run(dry_run=args.dry_run)
    finally:
        app.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        verb = "would purge" if args.dry_run else "purged"
        print(f"{verb} {len(report.purged)} recording(s); {report.held} expired but held (kept)")
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
