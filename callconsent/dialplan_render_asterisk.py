"""``callconsent dialplan render asterisk --out DIR``: the three Asterisk files with this
host's settings (FastAGI address, spool, AMI user, spy group, feature codes). The templates
and their rendering are :mod:`agi.dialplan`; this maps the config onto them."""

from __future__ import annotations

import sys
from pathlib import Path

from agi.dialplan import SECRET_PLACEHOLDER, DialplanSettings
from agi.dialplan import render as render_files
from callconsent.config import Config
from callconsent.privileges import readable_by


def settings(cfg: Config) -> DialplanSettings:
    a = cfg.asterisk
    return DialplanSettings(
        agi_host=a.agi_host,
        agi_port=a.agi_port,
        spool=str(cfg.spool_dir),
        config=cfg.source,
        ami_user=a.ami_user or "callconsent",
        ami_secret=a.ami_secret,
        ami_system_user=a.ami_system_user or "callconsent-system",
        spy_group=a.spy_group,
        feature_start=a.feature_start,
        feature_pause=a.feature_pause,
        feature_stop=a.feature_stop,
        feature_discard=a.feature_discard,
    )


def render(cfg: Config, out: Path) -> list[Path]:
    files = render_files(settings(cfg))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        # the manager file holds the AMI secret: Asterisk's group reads it, nobody else
        note = readable_by(
            path, cfg.asterisk.os_user, 0o640 if name.startswith("manager") else 0o644
        )
        if note:
            print(f"note: {note}", file=sys.stderr)
        written.append(path)
    if not cfg.asterisk.ami_secret:
        print(
            f"note: [asterisk] ami_secret is empty, so manager_callconsent.conf says "
            f"'secret = {SECRET_PLACEHOLDER}': set the same secret in both places",
            file=sys.stderr,
        )
    return written
