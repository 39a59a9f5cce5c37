"""The page: one self-contained HTML file from a `string.Template` (no template engine, no
JavaScript, no network: figures are inline PNG), styled to read on a phone as well."""

from __future__ import annotations

import datetime
import html
import os
import tempfile
from pathlib import Path
from string import Template

from torchshrink.errors import ConfigError

__all__ = ["PAGE", "check_writable", "render", "write_atomic"]

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 0.8rem;
       max-width: 62rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.4rem; margin: 0.3rem 0; } h2 { font-size: 1.15rem; border-bottom: 1px solid #ddd;
     padding-bottom: 0.2rem; margin-top: 1.6rem; } h3 { font-size: 1rem; }
nav a { margin-right: 0.7rem; white-space: nowrap; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0.5rem 0; }
table { border-collapse: collapse; font-size: 0.85rem; min-width: 50%; }
caption { text-align: left; font-weight: 600; padding: 0.2rem 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.25rem 0.55rem; text-align: left; white-space: nowrap; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; height: auto; display: block; margin: 0.6rem 0; }
pre { background: #f6f6f8; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
.note { color: #555; font-size: 0.85rem; } .assumptions li { font-size: 0.85rem; }
@media (max-width: 600px) { body { padding: 0.5rem; } table { font-size: 0.78rem; } }
</style>
</head>
<body>
<header><h1>$title</h1><p class="note">$subtitle</p><nav>$nav</nav></header>
<main>
$body
</main>
<footer><p class="note">written by torchshrink $version in $seconds s; no network or JavaScript needed</p></footer>
</body>
</html>
""")


def render(*, title: str, sections: list[tuple[str, str, str]], version: str, seconds: float) -> str:
    """The page for (id, heading, fragment) sections; empty fragments are left out."""
    kept = [(sid, head, frag) for sid, head, frag in sections if frag]
    nav = "\n".join(f'<a href="#{sid}">{html.escape(head)}</a>' for sid, head, _ in kept)
    body = "\n".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{frag}</section>' for sid, head, frag in kept)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return PAGE.substitute(title=html.escape(title), subtitle=f"generated {now}", nav=nav,
                           body=body, version=html.escape(version),
                           seconds=f"{seconds:.1f}")


def check_writable(path: str | os.PathLike[str], flag: str = "out") -> Path:
    """Create the parent directories of the page and check it can be written, before any work."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag} {str(out)!r} is a directory; give a file name such as report.html")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {str(out)!r}: cannot write in {str(parent)!r} ({e.strerror or e}); "
                          "choose a writable location") from e
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(f"{flag} {str(out)!r} exists and cannot be overwritten")
    return out


def write_atomic(path: Path, text: str) -> None:
    """The page appears complete or not at all (temporary file, then rename)."""
    from torchshrink.codec.fileformat import atomic_write

    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot write the report {str(path)!r} ({e.strerror or e})") from e
