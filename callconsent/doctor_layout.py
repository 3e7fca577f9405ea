"""``callconsent doctor``: what the PBX's own account can reach (issue 14, point 6).

The PBX runs as its own account (``[asterisk] os_user``, ``[freeswitch] os_user``), not as
root: it must write the spool, read the prompts and read the files ``callconsent dialplan
render`` wrote. Each is checked *as that account* (a child process switches to it, so modes,
groups and ACLs count exactly as they will for the PBX); that needs root, so as another user
the check says it was skipped.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from callconsent.config import Config
from callconsent.doctor import Finding, check
from callconsent.privileges import ask_as, blocked_on_the_way, describe, unreachable


def _pbx_accounts(cfg: Config) -> list[tuple[str, str, list[Path]]]:
    """(PBX, its account, the rendered files it must read) for each enabled PBX."""
    found = []
    if cfg.asterisk.enabled:
        conf = cfg.asterisk.conf_dir
        files = ("extensions", "features", "manager")
        rendered = [conf / f"{name}_callconsent.conf" for name in files]
        found.append(("asterisk", cfg.asterisk.os_user, rendered))
    if cfg.freeswitch.enabled:
        rendered = [cfg.freeswitch.conf_dir / "dialplan" / "callconsent.xml"]
        found.append(("freeswitch", cfg.freeswitch.os_user, rendered))
    return found


def what_blocks(spool: Path, prompts: Path, rendered: list[Path]) -> list[str]:
    """Run as the PBX's account: one line per thing it cannot do."""
    problems = []
    why = blocked_on_the_way(spool)
    if why is None and not os.path.isdir(spool):
        why = "it does not exist"
    if why is None and not os.access(spool, os.W_OK | os.X_OK):
        why = f"it cannot write there ({describe(spool)})"
    if why:
        problems.append(f"spool\tcannot write the spool {spool}: {why}")
    if os.path.isdir(prompts) or blocked_on_the_way(prompts):
        why = blocked_on_the_way(prompts) or unreachable(prompts)
        if why is None:
            files = sorted(prompts.rglob("*.wav"))
            bad = [p for p in files if not os.access(p, os.R_OK)]
            why = f"{len(bad)} of {len(files)} files unreadable, e.g. {bad[0]}" if bad else None
        if why:
            problems.append(f"prompts\tcannot read the prompts in {prompts}: {why}")
    for path in rendered:
        if os.path.lexists(path) or blocked_on_the_way(path):
            why = blocked_on_the_way(path) or unreachable(path)
            if why:
                problems.append(f"rendered\tcannot read {path}: {why}")
    return problems


@check
def pbx_account_reach(cfg: Config) -> list[Finding]:
    out: list[Finding] = []
    for pbx, account, rendered in _pbx_accounts(cfg):
        name = f"{pbx} account"
        try:
            pwd.getpwnam(account)
        except KeyError:
            out.append(
                Finding(
                    "warn",
                    name,
                    f"no account {account!r} on this host: cannot check what {pbx} can reach",
                    f"set [{pbx}] os_user to the account {pbx} runs as",
                )
            )
            continue
        if os.geteuid() != 0:
            out.append(
                Finding("ok", name, f"not checked as {account}: run callconsent doctor as root")
            )
            continue
        answer = ask_as(
            account,
            lambda r=rendered: "\n".join(what_blocks(cfg.spool_dir, cfg.prompt_dir, r)),
        )
        for line in filter(None, answer.splitlines()):
            what, _, message = line.partition("\t")
            text = f"{account} {message}" if message else f"{account}: {what}"
            out.append(Finding("error", name, text, _hint(what, cfg, account)))
        if not answer.strip():
            out.append(
                Finding(
                    "ok",
                    name,
                    f"{account} can write the spool, read the prompts and the rendered files",
                )
            )
    return out


def _hint(what: str, cfg: Config, account: str) -> str:
    if what == "spool":
        return (
            f"install -d -o {account} -g callconsent -m 2770 {cfg.spool_dir} "
            "(deploy/callconsent.tmpfiles.conf does it at boot)"
        )
    if what == "prompts":
        return (
            "keep the prompts outside the 0750 data dir ([prompts] dir, default "
            "/var/lib/callconsent-prompts), dirs 0755, files 0644: callconsent prompts build"
        )
    if what == "rendered":
        return (
            f"render them again as root (callconsent dialplan render gives them {account}'s "
            "group), or chgrp/chmod them yourself"
        )
    return ""
