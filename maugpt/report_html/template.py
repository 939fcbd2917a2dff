"""The page's frame: its constants, CSS, JavaScript (filters, the URL hash) and HTML template."""

from __future__ import annotations

import html
import string

#: Longest side of a gallery thumbnail, in pixels.
THUMB_SIZE = 160
#: Colour of the defect outline drawn onto thumbnails.
OUTLINE = (255, 0, 0)
#: An open answer counts as correct in the outcome filter from this ROUGE-L F1 on.
ROUGE_CORRECT = 0.5
#: Files embedded as downloads or figures only up to this size, so that a page stays openable.
MAX_EMBED_BYTES = 5_000_000
DASH = "—"
FILTERS = ("domain", "task", "product", "outcome")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#222;background:#fff;margin:0 auto;max-width:1280px;padding:1em}
nav{margin-bottom:1em}nav a{margin-right:1em}nav b{margin-right:1em}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{border:1px solid #ccc;padding:2px 7px}
th{background:#f2f2f2}.r{text-align:right}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em;margin:.5em 0}
.filters{position:sticky;top:0;z-index:1;background:#f4f4f4;border:1px solid #ddd;padding:.5em}
.filters label{margin-right:1em}
[hidden]{display:none !important}
.answer{display:flex;gap:12px;border:1px solid #ddd;border-left:6px solid #999;padding:8px;margin:8px 0}
.answer[data-outcome=incorrect]{border-left-color:#c33}.answer[data-outcome=correct]{border-left-color:#2a2}
.answer[data-outcome=mixed]{border-left-color:#e0a800}
.thumb{flex:none;width:160px;height:160px;background:#eee center/contain no-repeat}
.noimg{display:flex;align-items:center;justify-content:center;text-align:center;color:#777;font-size:12px}
.text{flex:1;min-width:0}.text p{margin:.15em 0;white-space:pre-wrap;overflow-wrap:anywhere}
.qid{color:#666;font-size:12px}.score{font-weight:600}
.cells{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:6px;margin-top:4px}
.cell{border:1px solid #ddd;border-top:4px solid #999;padding:4px}
.cell.correct{border-top-color:#2a2}.cell.incorrect{border-top-color:#c33}
figure img{max-width:100%}
"""

# Filters: each <select id="filter-X"> keeps the rows whose data-X equals its value ("all": any).
# The hash holds the non-default choices; the selects write it and a hash change re-applies it.
SCRIPT = """
(function () {
  var names = ["domain", "task", "product", "outcome"];
  var rows = Array.prototype.slice.call(document.querySelectorAll(".answer"));
  var shown = document.getElementById("shown");
  var selects = {};
  names.forEach(function (n) { selects[n] = document.getElementById("filter-" + n); });
  function apply() {
    var count = 0;
    rows.forEach(function (row) {
      var keep = names.every(function (n) {
        var s = selects[n];
        return !s || s.value === "all" || row.getAttribute("data-" + n) === s.value;
      });
      row.hidden = !keep;
      if (keep) { count += 1; }
    });
    if (shown) { shown.textContent = String(count); }
  }
  function fromHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    names.forEach(function (n) {
      var s = selects[n], wanted = params.has(n) ? params.get(n) : "all";
      if (s && Array.prototype.some.call(s.options, function (o) { return o.value === wanted; })) {
        s.value = wanted;
      }
    });
    apply();
  }
  function toHash() {
    var params = new URLSearchParams();
    names.forEach(function (n) { if (selects[n] && selects[n].value !== "all") { params.set(n, selects[n].value); } });
    location.hash = params.toString();
  }
  names.forEach(function (n) { if (selects[n]) { selects[n].addEventListener("change", toHash); } });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""

PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
<style>$thumbs</style>
</head>
<body>
$body
<script>$script</script>
</body>
</html>
""")


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too, so that it is safe in attributes); None → "—"."""
    return DASH if value is None else html.escape(str(value), quote=True)
