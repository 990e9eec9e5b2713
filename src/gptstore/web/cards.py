"""A model card's markdown as HTML that is safe to put in a page.

Cards are written by whoever publishes a model, so they are hostile input: markdown-it
renders them (raw HTML allowed, as the Hugging Face Hub allows it), then nh3 (the Rust
`ammonia` sanitiser) keeps only an allow-list of tags and attributes. Scripts, event
handlers, `javascript:` links, styles and iframes never reach the browser; links get
`rel="noopener noreferrer nofollow"`.
"""

from __future__ import annotations

from typing import Any

import nh3
from markdown_it import MarkdownIt

from gptstore.catalog.cards import parse_card

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre",
    "s", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"align"},
    "th": {"align"},
    "code": {"class"},
    "ol": {"start"},
}
#: link and image schemes kept (no javascript:, data: or vbscript: URLs)
URL_SCHEMES = {"http", "https", "mailto"}

_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")


def render_card_html(card: str) -> tuple[dict[str, Any], str]:
    """(front matter, sanitised HTML of the card's body)."""
    meta, body = parse_card(card)
    raw = _markdown.render(body)
    clean = nh3.clean(raw, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                      url_schemes=URL_SCHEMES, link_rel="noopener noreferrer nofollow",
                      strip_comments=True)
    return (meta if isinstance(meta, dict) else {}), clean
