"""Rewrite the campaign-file reference in a README from the campaign model.

Usage: ``python scripts/campaign_reference.py README.md``. The tables between the
``<!-- campaign-reference: NAME -->`` markers are generated; tests/test_campaign.py fails
when they differ from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchsend.campaign import render_reference


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    readme = Path(argv[0])
    readme.write_text(render_reference(readme.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
