"""`policyd matrix -o html`: one self-contained page (nothing fetched), the grouped verdicts
as coloured cells with the deciding rule in each tooltip, seen in a real headless Chromium
screenshot (Debian's chromium, installed by scripts/setup.sh --test)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import struct
import subprocess
import zlib
from html import unescape
from pathlib import Path

import pytest

from policyd.cli import main
from policyd.whatif.html import ALLOWED, DENIED

ARGS = ["matrix", "-f", "examples/cluster/demo.yaml", "-f", "examples/policies/allow-frontend-to-backend.yaml"]


def page(*extra: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*ARGS, "-o", "html", *extra]) == 0
    return out.getvalue()


def cells(html: str) -> list[tuple[str, str]]:
    """(class, tooltip) of every verdict cell, row by row."""
    return [(c, unescape(t)) for c, t in re.findall(r'<td class="([yn])" title="([^"]*)">', html)]


def test_page_is_self_contained_and_names_the_deciding_rule():
    html = page()
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert not re.search(r"<script|<link|src=|url\(|https?://", html), "nothing to fetch: it works offline"
    got = cells(html)
    groups = re.findall(r'<th scope="row"[^>]*>(g\d+) <span>([^<]*)</span>', html)
    assert len(got) == len(groups) ** 2 >= 9
    row = {name: i for i, (name, _) in enumerate(groups)}
    first = {name: pod.split(" ")[0] for name, pod in groups}
    fe = next(n for n, p in first.items() if "/frontend-" in p)
    be = next(n for n, p in first.items() if "/backend-" in p)
    un = next(n for n, p in first.items() if "/unallowed-" in p)
    n = len(groups)
    allowed_cell = got[row[fe] * n + row[be]]
    denied_cell = got[row[un] * n + row[be]]
    assert allowed_cell[0] == "y" and "ALLOWED" in allowed_cell[1] and "allow-frontend-to-backend" in allowed_cell[1]
    assert denied_cell[0] == "n" and "DENIED" in denied_cell[1] and "allow-frontend-to-backend" in denied_cell[1]
    assert "Pods by namespace" in html and "monitoring" in html


def test_html_needs_groups():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*ARGS, "-o", "html", "--by", "pod"]) == 2
    assert "--by profile" in err.getvalue()


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """A non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes) → width, height, pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, prev, pixels = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a, b, c = line[i - bpp] if i >= bpp else 0, prev[i], prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2,
                    4: a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c}[f]
            line[i] = (line[i] + pred) & 0xFF
        pixels += [tuple(line[i:i + 3]) for i in range(0, stride, bpp)]
        prev = line
    return width, height, pixels  # type: ignore[return-value]


def test_chromium_shows_green_and_red_cells(tmp_path: Path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --test installs it)")
    html = tmp_path / "matrix.html"
    text = page()
    html.write_text(text)
    shot = tmp_path / "matrix.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=900,600", html.as_uri()],
                   capture_output=True, timeout=120, check=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    width, height, pixels = png_pixels(shot.read_bytes())
    # Each colour must show as one band of screen rows for the legend, then one per table row
    # that has a cell of it (rows are apart by their borders), as the page's cells say.
    got = cells(text)
    n = round(len(got) ** 0.5)
    for cls, colour in (("y", ALLOWED), ("n", DENIED)):
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        lit = [any(all(abs(a - b) <= 8 for a, b in zip(pixels[y * width + x], rgb, strict=True)) for x in range(width)) for y in range(height)]
        bands = sum(1 for y in range(height) if lit[y] and (y == 0 or not lit[y - 1]))
        rows = sum(1 for r in range(n) if any(c == cls for c, _ in got[r * n:(r + 1) * n]))
        assert rows > 0 and bands == 1 + rows, (colour, bands, rows)


def test_page_names_the_audit_mode_policies_it_leaves_out(tmp_path: Path):
    """As the table does: an audit-mode policy enforces nothing, so the page says it is not
    in the matrix rather than leaving it out silently."""
    policy = tmp_path / "audited.yaml"
    policy.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                      "metadata: {name: watch-only, namespace: default, annotations: {policyd.io/audit: 'true'}}\n"
                      "spec: {podSelector: {matchLabels: {app: backend}}, policyTypes: [Ingress]}\n")
    html = page("-f", str(policy))
    assert re.search(r'<p class="audit">audit mode, not enforced and not in this matrix .*default/watch-only</p>', html), html[:2000]
    assert '<p class="audit">' not in page()
