"""Which Debian archive to build from: the machine's own apt sources, or mirrors given by hand.

The host's apt configuration already names a reachable mirror (a fleet's private mirror,
a proxy, or Debian's own), so the base image is built from it rather than from a hard-coded
host. Both formats apt reads are parsed: one-line ``sources.list`` files (``*.list``) and
deb822 ``*.sources`` stanzas. Entries for the suite and its ``-updates`` and ``-security``
suites are kept, in that order, as one-line ``deb`` entries for mmdebstrap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .oci import ImageError

# Options carried over from the host's entries; anything else (e.g. by-hash) is apt's default.
_KEPT_OPTIONS = {"signed-by", "arch", "trusted"}
_DEB822_OPTIONS = {"signed-by": "signed-by", "architectures": "arch", "trusted": "trusted"}


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry: a URI, one suite, its components and the options kept from the host."""

    uri: str
    suite: str
    components: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()

    def line(self) -> str:
        """The entry in one-line format, as mmdebstrap takes a MIRROR argument."""
        opts = " ".join(f"{key}={value}" for key, value in self.options)
        head = f"deb [{opts}]" if opts else "deb"
        return " ".join([head, self.uri, self.suite, *self.components])


def parse_one_line(text: str) -> list[AptSource]:
    """``deb [opt=value ...] URI SUITE [COMPONENT ...]`` lines; ``deb-src`` and comments skipped."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        options: list[tuple[str, str]] = []
        if rest.startswith("["):
            inside, closed, rest = rest[1:].partition("]")
            if not closed:
                continue
            for item in inside.split():
                key, eq, value = item.partition("=")
                if eq and key in _KEPT_OPTIONS:
                    options.append((key, value))
        fields = rest.split()
        if len(fields) >= 2:
            sources.append(AptSource(fields[0], fields[1], tuple(fields[2:]), tuple(options)))
    return sources


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    """deb822 paragraphs as ``{lowercased field: value}``; continuation lines joined by ``\\n``."""
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif raw[0] in " \t" and key:
            fields[key] += "\n" + raw.strip()
        else:
            name, colon, value = raw.partition(":")
            if colon:
                key = name.strip().lower()
                fields[key] = value.strip()


def parse_deb822(text: str) -> list[AptSource]:
    """``Types: deb`` stanzas of a ``.sources`` file, one :class:`AptSource` per URI and suite."""
    sources = []
    for stanza in _stanzas(text):
        if "deb" not in stanza.get("types", "").split():
            continue
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        options = []
        for field, key in _DEB822_OPTIONS.items():
            value = stanza.get(field, "").strip()
            if value and "\n" not in value:  # an inline (multi-line) key cannot be passed on
                options.append((key, ",".join(value.split())))
        components = tuple(stanza.get("components", "").split())
        for uri in stanza.get("uris", "").split():
            for suite in stanza.get("suites", "").split():
                sources.append(AptSource(uri, suite, components, tuple(options)))
    return sources


def host_sources(root: Path = Path("/")) -> list[AptSource]:
    """Every ``deb`` entry of the machine's apt configuration, in the order apt reads them."""
    apt = root / "etc/apt"
    sources = []
    main = apt / "sources.list"
    if main.is_file():
        sources += parse_one_line(main.read_text(errors="replace"))
    parts = apt / "sources.list.d"
    for path in sorted(parts.glob("*.list")) if parts.is_dir() else []:
        sources += parse_one_line(path.read_text(errors="replace"))
    for path in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        sources += parse_deb822(path.read_text(errors="replace"))
    return sources


def suite_family(suite: str) -> tuple[str, ...]:
    """The suite and the suites that carry its fixes, in the order they are listed."""
    return (suite, f"{suite}-updates", f"{suite}-security", f"{suite}/updates")


def select_sources(sources: Sequence[AptSource], suite: str) -> list[AptSource]:
    """Entries of ``suite`` and its update suites; an error if the suite itself is missing."""
    family = suite_family(suite)
    chosen: list[AptSource] = []
    for wanted in family:
        chosen += [s for s in sources if s.suite == wanted and s not in chosen]
    if not any(s.suite == suite for s in chosen):
        found = sorted({s.suite for s in sources}) or ["none"]
        raise ImageError(
            f"no apt source for suite {suite!r} in /etc/apt (found: {', '.join(found)}); "
            "pass --mirror URL"
        )
    return chosen


def mirror_lines(mirrors: Sequence[str], suite: str) -> list[str]:
    """``--mirror`` values as mmdebstrap entries: a URI means ``deb URI SUITE main``."""
    lines = []
    for mirror in mirrors:
        mirror = mirror.strip()
        if re.match(r"deb\s", mirror):
            lines.append(mirror)
        elif "://" in mirror:
            lines.append(AptSource(mirror, suite, ("main",)).line())
        else:
            raise ImageError(f"--mirror {mirror!r} is neither a URI nor a 'deb ...' line")
    return lines
