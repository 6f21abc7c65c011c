"""Nothing from a table, a sidecar or a notebook output runs as script in the published site.

Two layers. Before the book is built, :func:`sanitize_notebook` rewrites every notebook that goes into it: HTML
outputs are cleaned with nh3 (an allowlist: tables, text markup, images; no scripts, event handlers, styles or
``javascript:`` links) after a plain pandas table among them is re-rendered as the report's other tables are
(:mod:`bobkit.report.frames`: no index column, integers as integers), Markdown outputs (``Analysis.say`` sentences
with backbone names in them) are rendered with raw HTML disabled, so ``<img src=x onerror=...>`` in a name shows as
text, and script, widget and stderr outputs are dropped (stderr holds progress bars and Python warnings, which
readers should not see; the sanitiser counts what it removed). After the build, :func:`check_site` scans every page
for active content the first layer should have stopped and names each finding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import nbformat
import nh3

from bobkit.report.frames import readable_html

# An allowlist, not a blocklist: whatever is not named here is removed (the text inside is kept).
ALLOWED_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details", "div", "dl",
    "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
    "ol", "p", "pre", "s", "samp", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul", "var", "wbr",
})
ALLOWED_ATTRIBUTES = {
    "*": {"class", "title"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "details": {"open"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto", "data"}
# Inline images are fine; any other data: URL (text/html, image/svg+xml with script) is not.
_SAFE_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*$", re.IGNORECASE)
# Outputs that are code or interactive state: dropped (their text/plain fallback stays when there is one).
DROPPED_MIMETYPES = frozenset({
    "application/javascript", "text/javascript", "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json", "application/vnd.bokehjs_exec.v0+json",
    "application/vnd.holoviews_exec.v0+json", "text/latex",
})


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute in {"href", "src"} and value.strip().lower().startswith("data:"):
        return value if tag == "img" and attribute == "src" and _SAFE_DATA_URL.match(value.strip()) else None
    return value


def clean_html(fragment: str) -> str:
    """An HTML fragment with everything outside the allowlist removed (scripts and styles with their content)."""
    return nh3.clean(fragment, tags=set(ALLOWED_TAGS), attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
                     url_schemes=set(URL_SCHEMES), attribute_filter=_filter_attribute,
                     clean_content_tags={"script", "style"}, strip_comments=True)


def markdown_to_html(text: str) -> str:
    """CommonMark to HTML with raw HTML disabled (``<b>`` in the text shows as ``<b>``), then cleaned."""
    from markdown_it import MarkdownIt

    return clean_html(MarkdownIt("commonmark", {"html": False}).render(text))


# --------------------------------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class SanitizeReport:
    """What :func:`sanitize_notebook` changed in one notebook."""

    stderr_removed: int = 0
    outputs_dropped: int = 0
    html_cleaned: int = 0
    markdown_rendered: int = 0
    changed_cells: list[int] = field(default_factory=list)


def _as_text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _sanitize_bundle(data: dict[str, Any], report: SanitizeReport) -> dict[str, Any]:
    bundle = {k: v for k, v in data.items() if k not in DROPPED_MIMETYPES}
    if "text/markdown" in bundle:
        rendered = markdown_to_html(_as_text(bundle.pop("text/markdown")))
        bundle.setdefault("text/html", rendered)
        report.markdown_rendered += 1
    if "text/html" in bundle:
        fragment = _as_text(bundle["text/html"])
        bundle["text/html"] = clean_html(readable_html(fragment) or fragment)
        report.html_cleaned += 1
    return bundle


def sanitize_notebook(nb: nbformat.NotebookNode) -> SanitizeReport:
    """Make ``nb``'s outputs safe to publish, in place (see the module docstring); returns what changed."""
    report = SanitizeReport()
    nb.metadata.pop("widgets", None)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                report.stderr_removed += 1
                continue
            if output.get("output_type") in {"display_data", "execute_result"}:
                output["data"] = _sanitize_bundle(dict(output.get("data", {})), report)
                if not output["data"]:
                    report.outputs_dropped += 1
                    continue
            kept.append(output)
        if len(kept) != len(cell.get("outputs", [])):
            report.changed_cells.append(index)
        cell["outputs"] = kept
    return report


# --------------------------------------------------------------------------------------------------------------------
# The built site
# --------------------------------------------------------------------------------------------------------------------

# The book theme's own buttons (full screen, print); any other inline handler is a finding.
THEME_HANDLERS = frozenset({("button", "onclick", "toggleFullScreen()"), ("button", "onclick", "window.print()")})
_URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "xlink:href", "srcset", "data", "poster",
                             "background"})
_ACTIVE_SCHEMES = re.compile(r"^\s*(javascript|vbscript|data):", re.IGNORECASE)
_REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
_FORBIDDEN_TAGS = frozenset({"iframe", "object", "embed", "form", "base", "frame", "frameset", "applet"})
_SCRIPT_TYPES = frozenset({"text/javascript", "application/javascript", "module", "text/ecmascript"})
# The one inline script myst-nb writes into every notebook page (the kernel name for the theme's launch buttons).
_THEME_SCRIPT = re.compile(r"^\s*kernelName = '[\w.-]+'\s*$")


class _PageScanner(HTMLParser):
    """Collects active content in one page: inline handlers and script URLs anywhere; remote scripts, styles and
    images (the site must open offline); frames, forms and scripts inside the article (the part of the page made
    from notebooks and tables), except the theme's own non-executable configuration blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.findings: list[str] = []
        self.article_depth = 0
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "article":
            self.article_depth += 1
        inside = self.article_depth > 0
        if inside and tag in _FORBIDDEN_TAGS:
            self.findings.append(f"<{tag}> element inside the page content")
        if tag == "meta" and any(k == "http-equiv" and (v or "").lower() == "refresh" for k, v in attrs):
            self.findings.append("<meta http-equiv=refresh>")
        for name, value in attrs:
            self._check_attribute(tag, name, value or "")
        if tag == "script" and inside:
            script_type = dict(attrs).get("type") or "text/javascript"
            self._script = [] if script_type.lower() in _SCRIPT_TYPES else None

    def _check_attribute(self, tag: str, name: str, value: str) -> None:
        if name.startswith("on") and (tag, name, value) not in THEME_HANDLERS:
            self.findings.append(f"<{tag} {name}={value!r}>")
        if name in _URL_ATTRIBUTES and _ACTIVE_SCHEMES.match(value):
            if not (tag == "img" and name == "src" and _SAFE_DATA_URL.match(value.strip())):
                self.findings.append(f"<{tag} {name}={value[:60]!r}>")
        if tag in {"script", "link", "img"} and name in {"src", "href"} and _REMOTE.match(value):
            self.findings.append(f"<{tag} {name}={value[:80]!r}> (needs the network)")

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "article":
            self.article_depth -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            code = "".join(self._script)
            if not _THEME_SCRIPT.match(code):
                self.findings.append(f"<script> inside the page content: {code.strip()[:80]!r}")
            self._script = None
        if tag == "article":
            self.article_depth -= 1
            if self.article_depth < 0:
                self.findings.append("unbalanced </article> (content closed the page's article)")


def scan_page(text: str) -> list[str]:
    """Active content in one HTML page (empty when clean)."""
    scanner = _PageScanner()
    scanner.feed(text)
    scanner.close()
    return scanner.findings


def scan_search_index(text: str) -> list[str]:
    """Titles with markup in Sphinx's ``searchindex.js``: its search page inserts titles as HTML."""
    match = re.search(r"Search\.setIndex\((.*)\)\s*;?\s*$", text, re.DOTALL)
    if not match:
        return []
    index = json.loads(match.group(1))
    titles = [*index.get("titles", []), *index.get("alltitles", {})]
    return [f"search title {title[:60]!r}" for title in titles if "<" in title or ">" in title]


def check_site(html_dir: Path) -> dict[str, list[str]]:
    """``{page: findings}`` for every page of a built site (and its search index) that holds active content it
    should not."""
    problems = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        findings = scan_page(page.read_text(encoding="utf-8", errors="replace"))
        if findings:
            problems[page.relative_to(html_dir).as_posix()] = findings
    index = Path(html_dir) / "searchindex.js"
    if index.is_file():
        findings = scan_search_index(index.read_text(encoding="utf-8", errors="replace"))
        if findings:
            problems["searchindex.js"] = findings
    return problems
