"""README.md and docs/: links and anchors resolve, the README stays short, its API example runs."""
import contextlib
import glob
import gzip
import io
import os
import re

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from src.dataset import FASHION_MNIST_DIR

README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
README_MAX_BYTES = 12_000
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text):
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def slug(heading):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path):
    """Every heading's anchor; repeated headings get -1, -2, ... as on GitHub."""
    seen, result = {}, set()
    for heading in HEADING.findall(FENCE.sub("", read(path))):
        base = slug(heading)
        result.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return result


def relative_links(path):
    return [target for target in LINK.findall(prose(read(path)))
            if not re.match(r"^[a-z]+:", target)]


def test_slug_follows_github():
    assert slug("The `--model` flag") == "the---model-flag"
    assert slug("Two variants for 28×28 images") == "two-variants-for-2828-images"
    assert slug("oneDNN's instruction set") == "onednns-instruction-set"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_and_anchors_resolve(page):
    links = relative_links(page)
    assert links or page != README, "no links found: the link pattern is broken"
    for target in links:
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        assert os.path.exists(resolved), f"{os.path.relpath(page, ROOT)}: {target} does not exist"
        if anchor:
            assert resolved.endswith(".md"), f"{os.path.relpath(page, ROOT)}: {target}: anchor into a non-page"
            assert anchor in anchors(resolved), (f"{os.path.relpath(page, ROOT)}: {target}: no heading with that "
                                                 f"anchor in {os.path.relpath(resolved, ROOT)}")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(ROOT, target.partition("#")[0])) for target in relative_links(README)}
    assert set(PAGES[1:]) <= linked


def test_readme_is_short():
    assert os.path.getsize(README) <= README_MAX_BYTES


def test_the_model_zoo_alias_is_documented_once():
    assert sum(read(page).count("--checkpoint_nm") for page in PAGES) == 1


def test_readme_python_example_prints_what_it_says(tmp_path, monkeypatch):
    text = read(README)
    example = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    claimed = re.search(r"it prints `([^`]+)`", text).group(1)
    index = int(re.search(r"Fashion-MNIST test image (\d+)", text).group(1))
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[index]
    Image.fromarray(pixels).save(tmp_path / "shirt.png")
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)  # same logits as graph mode, without the compile
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    assert out.getvalue().strip() == claimed


def test_the_training_kernels_table_names_the_helpers_of_src_fused():
    from src import fused

    text = read(os.path.join(ROOT, "docs", "performance.md"))
    table = text.split("| helper | forward | replaces |", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^\| `(\w+)`(?:, `(\w+)`)?", table, re.M)
    helpers = [name for pair in names for name in pair if name]
    assert len(helpers) >= 6, table
    missing = [name for name in helpers if not callable(getattr(fused, name, None))]
    assert not missing, f"docs/performance.md names helpers src/fused.py does not have: {missing}"
